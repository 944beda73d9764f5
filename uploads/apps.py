from django.apps import AppConfig


class UploadsConfig(AppConfig):
    name = "uploads"
    verbose_name = "Uploads"

    def ready(self) -> None:
        from relaypacs.events import subscribe

        from . import checks  # noqa: F401  (registers the storage start-up check)
        from .metrics import upload_metrics_on_domain_event

        subscribe(upload_metrics_on_domain_event)
