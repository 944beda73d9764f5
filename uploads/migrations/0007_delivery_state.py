# Written by hand (only this change's fields): the delivery bookkeeping of item 1 and 4 of
# issue 9. It follows the latest migration present when it was written; the numbering is
# reconciled when the work lands.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("uploads", "0006_chunk_counter"),
    ]

    operations = [
        migrations.AddField(
            model_name="uploadsession",
            name="dispatched_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="uploadsession",
            name="lease_expiries",
            field=models.IntegerField(default=0),
        ),
    ]
