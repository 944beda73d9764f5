from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        from relaypacs.events import subscribe

        from .subscribers import analytics_on_domain_event

        subscribe(analytics_on_domain_event)
