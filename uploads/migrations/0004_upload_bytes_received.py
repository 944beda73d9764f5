from django.db import migrations, models
from django.db.models import Max, Sum


def fill_from_chunks(apps, schema_editor):
    """Uploads that were receiving before this migration get their sums from their chunks."""
    UploadSession = apps.get_model("uploads", "UploadSession")
    UploadChunk = apps.get_model("uploads", "UploadChunk")
    sums = (
        UploadChunk.objects.filter(stored=True)
        .values("session_id")
        .annotate(total=Sum("size"), last=Max("received_at"))
    )
    for row in sums.iterator(chunk_size=1000):
        UploadSession.objects.filter(pk=row["session_id"]).update(
            bytes_received=row["total"], last_chunk_at=row["last"]
        )


class Migration(migrations.Migration):
    dependencies = [
        ("uploads", "0003_chunk_times_received"),
    ]

    operations = [
        migrations.AddField(
            model_name="uploadsession",
            name="bytes_received",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="uploadsession",
            name="last_chunk_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(fill_from_chunks, migrations.RunPython.noop),
    ]
