from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("uploads", "0007_delivery_state")]

    operations = [
        migrations.AlterModelOptions(
            name="study",
            options={"ordering": ["id"], "verbose_name_plural": "studies"},
        ),
    ]
