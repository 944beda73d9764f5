"""The staff web sign-in: server-rendered pages for the staff who work at a desk
(radiologists at /reports/, auditors later), with the accounts of the app and the API.

- Sign-in checks exactly what the API's sign-in checks (``services.sign_in_check``: the
  password, the two-step code when enrolled, django-axes' lockout, the audit of failures)
  and then starts a Django session cookie (CSRF-protected forms) tied to an
  ``AuthSession``: the device is listed among the account's signed-in devices, idles out
  after AUTH_SESSION_IDLE_TIMEOUT, and "sign out everywhere" ends it too.
- ``staff_page(roles=..., audience=...)`` guards a page: signed out, or a session that
  ended, goes to the sign-in page (and back afterwards); a role the page is not for gets
  a 403 page that says whom the page is for and offers a way out.
- Apps register their pages (``staff_page_register``) so that the sign-in, the home page
  and the 403 page can point each person to the pages of their role without accounts
  importing those apps.
- Every Django session tied to an AuthSession (this sign-in's and the admin site's) is
  checked on every request (``auth_session_guard``): when the AuthSession ends, the cookie
  stops opening anything, /admin/ included.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import django_otp
from django import forms
from django.contrib import messages
from django.contrib.auth import login as django_login
from django.contrib.auth import logout as django_logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from relaypacs.errors import ApplicationError

from .clientinfo import client_info
from .models import AuthSession, Role, User
from .services import auth_session_revoke, auth_session_start, auth_session_touch, sign_in_check

# The API's hints speak of request fields; on this page they speak of the form.
_WEB_HINTS = {
    "otp_required": "Enter your password again with the 6-digit code from your authenticator "
    "app (or a backup code) in 'Two-step sign-in code'.",
    "invalid_otp": "Wait for the next code in your authenticator app, then enter your password "
    "and the new code.",
}
# The Django session's key holding the id of the AuthSession the sign-in started.
AUTH_SESSION_KEY = "relaypacs_auth_session_id"
# Set on a request whose AuthSession auth_session_guard found on (one check per request).
_AUTH_SESSION_CHECKED = "_relaypacs_auth_session_checked"


@dataclass(frozen=True)
class StaffPage:
    """A page of the staff web: who it is for and where it is."""

    label: str
    url_name: str
    roles: frozenset[str]


_STAFF_PAGES: dict[str, StaffPage] = {}


def staff_page_register(*, label: str, url_name: str, roles: Iterable[str]) -> None:
    """Make a staff page known to the sign-in, the home page and the 403 page (called
    from an app's ``ready``). Idempotent."""
    _STAFF_PAGES[url_name] = StaffPage(label=label, url_name=url_name, roles=frozenset(roles))


def staff_pages_for(*, user: Any) -> list[StaffPage]:
    """The registered pages ``user``'s role opens."""
    role = getattr(user, "role", None)
    return [page for page in _STAFF_PAGES.values() if role in page.roles]


class SignInForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password = forms.CharField(
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    otp = forms.CharField(
        required=False,
        max_length=32,
        label="Two-step sign-in code",
        help_text="Only if your account uses two-step sign-in: the 6-digit code from your "
        "authenticator app, or a backup code.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "spellcheck": "false"}),
    )


def _safe_next(request: HttpRequest, value: str | None) -> str | None:
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return None


@sensitive_post_parameters("password", "otp")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request: HttpRequest) -> HttpResponse:
    next_url = _safe_next(request, request.POST.get("next") or request.GET.get("next"))
    form = SignInForm(request.POST or None)
    error: ApplicationError | None = None
    hint = ""
    status = 200
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            signed_in = sign_in_check(
                username=data["username"],
                password=data["password"],
                otp=data["otp"] or None,
                client=client_info(request),
                request=request,
            )
        except ApplicationError as exc:
            error, status = exc, exc.status_code
            hint = _WEB_HINTS.get(exc.code, exc.hint)
        else:
            return _start_session(request, signed_in.user, signed_in.device, next_url)
        finally:
            # The refusal is this page's own sentence (error): AxesMiddleware would replace
            # the whole response with its plain lockout text otherwise. The lockout holds:
            # sign_in_check refuses every attempt while it lasts.
            request.axes_locked_out = False  # type: ignore[attr-defined]
    return render(
        request,
        "accounts/login.html",
        {
            "form": form,
            "error": error,
            "hint": hint,
            "otp_needed": error is not None and error.code in {"otp_required", "invalid_otp"},
            "next": next_url or "",
        },
        status=status,
    )


def _start_session(
    request: HttpRequest, user: User, device: Any, next_url: str | None
) -> HttpResponse:
    # login() rotates the session key (no fixation) and sends user_logged_in, which resets
    # django-axes' count and records last_login, as the API's sign-in does.
    django_login(request, user)
    if device is not None:
        # The admin site accepts this session's 2FA; the session still ends with its
        # AuthSession there too (auth_session_guard, on every request).
        django_otp.login(request, device)
    auth_session_link(request, user=user)
    if next_url:
        return HttpResponseRedirect(next_url)
    return redirect("staff-home")


@require_POST
@csrf_protect
def sign_out(request: HttpRequest) -> HttpResponse:
    """End the web session and its AuthSession. Signing out twice is harmless."""
    end_linked_auth_session(request)
    django_logout(request)
    messages.info(request, "You have signed out.")
    return redirect("staff-sign-in")


def end_linked_auth_session(request: HttpRequest) -> None:
    """Revoke (reason ``logout``, audited) the AuthSession this Django session is tied to,
    if any; the caller then logs the Django session out. Idempotent."""
    session_id = request.session.get(AUTH_SESSION_KEY)
    if session_id:
        session = AuthSession.objects.select_related("user").filter(pk=session_id).first()
        if session is not None:
            auth_session_revoke(session=session, reason="logout", client=client_info(request))


def _to_sign_in(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect(
        f"{reverse('staff-sign-in')}?{_query(next=request.get_full_path())}"
    )


def _query(**params: str) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def auth_session_link(request: HttpRequest, *, user: User) -> None:
    """Start an AuthSession for ``user``, just signed in on ``request`` (django's login()
    done), and tie the Django session to it: from now on the cookie works only while that
    AuthSession is on (``auth_session_guard``)."""
    session = auth_session_start(user=user, client=client_info(request))
    request.session[AUTH_SESSION_KEY] = str(session.id)


def _session_ended(request: HttpRequest) -> None:
    django_logout(request)
    messages.info(
        request,
        "Your session has ended (signed out from another device, or unused for a long "
        "time). Sign in again to continue.",
        fail_silently=True,
    )


def auth_session_guard(request: HttpRequest) -> None:
    """For a Django session tied to an AuthSession (the staff web's sign-in, the admin
    site's): if that AuthSession was revoked ("sign out everywhere", an administrator, a
    sign-out) or idled out, end the Django session now, before any view (the admin site
    included) sees its user; otherwise record the use (``auth_session_touch``, which
    writes at most once a minute). Sessions not tied to one are left alone. Run on every
    request by ``accounts.middleware.AuthSessionMiddleware``."""
    session_id = request.session.get(AUTH_SESSION_KEY)
    if not session_id:
        return
    user = request.user
    if isinstance(user, User) and auth_session_touch(session_id=str(session_id), user_id=user.pk):
        setattr(request, _AUTH_SESSION_CHECKED, True)  # noqa: B010 - a private mark
        return
    _session_ended(request)


def staff_session_user(request: HttpRequest) -> User | None:
    """The user of a live staff web session, or None (signed out, or its AuthSession was
    revoked or idled out: then the Django session is ended as well)."""
    user = request.user
    session_id = request.session.get(AUTH_SESSION_KEY)
    if not isinstance(user, User) or not session_id:
        return None
    if getattr(request, _AUTH_SESSION_CHECKED, False):
        return user  # the middleware checked it for this request
    if not auth_session_touch(session_id=str(session_id), user_id=user.pk):
        _session_ended(request)
        return None
    return user


def staff_page(
    *, roles: Iterable[str], audience: str
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Guard a staff page: only a live staff web session of one of ``roles`` passes
    (``request.user`` is then that User). ``audience`` ends the 403 page's sentence
    "This page is for ...". Never cached."""
    allowed = frozenset(roles)

    def decorate(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @functools.wraps(view)
        @never_cache
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            user = staff_session_user(request)
            if user is None:
                return _to_sign_in(request)
            if user.role not in allowed and not (user.is_superuser and Role.ADMIN in allowed):
                return forbidden(request, audience=audience)
            return view(request, *args, **kwargs)

        return guarded

    return decorate


def forbidden(request: HttpRequest, *, audience: str) -> HttpResponse:
    """The 403 page: whom the page is for, who is signed in, and the ways out."""
    user = request.user
    role = getattr(user, "role", None)
    return render(
        request,
        "accounts/forbidden.html",
        {
            "audience": audience,
            "role_label": Role(role).label if role in Role.values else "",
            "pages": staff_pages_for(user=user),
        },
        status=403,
    )


@never_cache
def home(request: HttpRequest) -> HttpResponse:
    """After sign-in without a page to return to: the one page of the role, or a list."""
    user = staff_session_user(request)
    if user is None:
        return _to_sign_in(request)
    pages = staff_pages_for(user=user)
    if len(pages) == 1:
        return redirect(pages[0].url_name)
    return render(request, "accounts/home.html", {"pages": pages})
