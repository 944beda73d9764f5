"""The staff web sign-in (accounts.web), mounted at accounts/ (relaypacs/urls.py)."""

from django.urls import path

from . import web

urlpatterns = [
    path("", web.home, name="staff-home"),
    path("login/", web.sign_in, name="staff-sign-in"),
    path("logout/", web.sign_out, name="staff-sign-out"),
]
