from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from relaypacs.events import subscribe

        from .subscribers import audit_domain_event

        subscribe(audit_domain_event)

        from .audit_web import AUDIT_ROLES
        from .web import staff_page_register

        staff_page_register(label="Audit trail", url_name="audit-web:trail", roles=AUDIT_ROLES)

        from axes.signals import user_locked_out
        from django.db.models.signals import post_migrate

        from .signals import audit_lockout, sync_admin_access_after_migrate

        user_locked_out.connect(audit_lockout, dispatch_uid="accounts.audit_lockout")
        post_migrate.connect(
            sync_admin_access_after_migrate, dispatch_uid="accounts.sync_admin_access"
        )
