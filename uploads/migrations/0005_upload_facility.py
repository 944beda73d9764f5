import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def facility_from_owner(apps, schema_editor):
    """Uploads made before this migration take their owner's facility of today (the best
    record there is of where they were made)."""
    UploadSession = apps.get_model("uploads", "UploadSession")
    User = apps.get_model("accounts", "User")
    UploadSession.objects.filter(facility__isnull=True).update(
        facility_id=Subquery(User.objects.filter(pk=OuterRef("owner_id")).values("facility_id"))
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("uploads", "0004_upload_last_chunk_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="uploadsession",
            name="facility",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="uploads",
                to="accounts.facility",
            ),
        ),
        migrations.RunPython(facility_from_owner, migrations.RunPython.noop),
    ]
