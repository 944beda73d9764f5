from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from relaypacs.events import subscribe

        from .subscribers import audit_domain_event

        subscribe(audit_domain_event)
