from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "PACS destinations"

    def ready(self) -> None:
        from pacs import checks  # noqa: F401  (registers the system checks)
