from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("pacs", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="PacsHealthProbe",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("target_key", models.CharField(max_length=120, unique=True)),
                ("state", models.CharField(blank=True, max_length=16)),
                ("detail", models.CharField(blank=True, max_length=300)),
                ("checked_at", models.DateTimeField(blank=True, null=True)),
                ("next_probe_at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "PACS health probe",
            },
        ),
    ]
