from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reports", "0002_version_render_dispatch"),
    ]

    operations = [
        migrations.AddField(
            model_name="pacsreportobject",
            name="failures",
            field=models.PositiveSmallIntegerField(default=0),
        ),
    ]
