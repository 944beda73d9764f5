"""Django admin with two-factor sign-in (the admin site is set here, before models load)."""

from django.contrib.admin.apps import AdminConfig


class RelayAdminConfig(AdminConfig):
    default_site = "accounts.admin_site.RelayAdminSite"
