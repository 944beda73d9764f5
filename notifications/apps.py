from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from relaypacs.events import subscribe

        from .subscribers import notifications_on_domain_event

        subscribe(notifications_on_domain_event)
