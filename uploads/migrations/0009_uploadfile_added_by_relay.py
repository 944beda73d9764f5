from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("uploads", "0008_study_verbose_name")]

    operations = [
        migrations.AddField(
            model_name="uploadfile",
            name="added_by_relay",
            field=models.BooleanField(default=False),
        ),
    ]
