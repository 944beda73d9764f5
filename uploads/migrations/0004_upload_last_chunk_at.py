from django.db import migrations, models
from django.db.models import Max


def fill_from_chunks(apps, schema_editor):
    """Uploads that were receiving before this migration take their last chunk's time."""
    UploadSession = apps.get_model("uploads", "UploadSession")
    UploadChunk = apps.get_model("uploads", "UploadChunk")
    lasts = (
        UploadChunk.objects.filter(stored=True)
        .values("session_id")
        .annotate(last=Max("received_at"))
    )
    for row in lasts.iterator(chunk_size=1000):
        UploadSession.objects.filter(pk=row["session_id"]).update(last_chunk_at=row["last"])


class Migration(migrations.Migration):
    dependencies = [
        ("uploads", "0003_chunk_times_received"),
    ]

    operations = [
        migrations.AddField(
            model_name="uploadsession",
            name="last_chunk_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(fill_from_chunks, migrations.RunPython.noop),
    ]
