from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "reports"
    verbose_name = "Reports"

    def ready(self) -> None:
        from relaypacs.events import subscribe

        from .services.audit import register_audit_actions
        from .subscribers import report_on_domain_event

        register_audit_actions()
        subscribe(report_on_domain_event)

        from accounts.web import staff_page_register

        from .selectors import READER_ROLES

        staff_page_register(label="Worklist", url_name="reports-web:worklist", roles=READER_ROLES)
