import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Sum


def fill_from_chunks(apps, schema_editor):
    """Uploads that were receiving before this migration start from their stored chunks."""
    UploadChunk = apps.get_model("uploads", "UploadChunk")
    UploadChunkCounter = apps.get_model("uploads", "UploadChunkCounter")
    totals = (
        UploadChunk.objects.filter(stored=True)
        .values("session_id")
        .annotate(total=Sum("size"))
        .order_by("session_id")
    )
    batch = []
    for row in totals.iterator(chunk_size=1000):
        batch.append(UploadChunkCounter(session_id=row["session_id"], bytes_received=row["total"]))
        if len(batch) >= 1000:
            UploadChunkCounter.objects.bulk_create(batch)
            batch = []
    UploadChunkCounter.objects.bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [
        ("uploads", "0005_upload_facility"),
    ]

    operations = [
        migrations.CreateModel(
            name="UploadChunkCounter",
            fields=[
                (
                    "session",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="chunk_counter",
                        serialize=False,
                        to="uploads.uploadsession",
                    ),
                ),
                ("bytes_received", models.BigIntegerField(default=0)),
            ],
        ),
        migrations.RunPython(fill_from_chunks, migrations.RunPython.noop),
    ]
