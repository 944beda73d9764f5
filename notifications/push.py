"""Web Push: the devices' subscriptions, and each notification pushed to them.

A subscription belongs to one signed-in device (an accounts ``AuthSession``): posting
again replaces it, signing out (any revocation of the session: ``account.session_revoked``)
deletes it, and so does a push service answering 404 or 410, or an endpoint that is no
longer a public address (clients/webpush.py). A user keeps at most
MAX_SUBSCRIPTIONS_PER_USER. Every ``Notification`` made (services.event_append) queues,
after commit, one Celery task per live subscription of its user (``_live``: the session not
revoked, not idle past AUTH_SESSION_IDLE_TIMEOUT, the user active), so a push service that
is slow for one device does not hold back another, and a retry sends to that one device only.

The payload (``push_payload``) is the notification's fixed words (texts.py: no patient
data), the screen a click opens, the unread count for the badge: at most
PAYLOAD_MAX_BYTES, which every push service accepts after encryption.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from accounts.models import AuthSession
from relaypacs.errors import ApplicationError

from . import vapid
from .clients import webpush
from .models import Event, Notification, NotificationKind, PushSubscription

logger = logging.getLogger(__name__)

# RFC 8291 leaves 4,096 bytes per message minus the encryption's overhead (86 bytes of
# header, 16 of tag, 1 of padding delimiter); Apple and Mozilla document ~4 KB. 3,990 leaves
# a margin.
PAYLOAD_MAX_BYTES = 3990
# Browsers' endpoints are under 600 characters; a longer one is not a push service's.
ENDPOINT_MAX_CHARS = 2048
P256DH_BYTES = 65  # an uncompressed P-256 point
# One user signs in on a phone, a tablet, a workstation or two: 10 devices is plenty, and
# bounds the pushes (and push-service requests) one notification costs.
MAX_SUBSCRIPTIONS_PER_USER = 10
# The task's retries: 2^n s (n = 0, 1, …), at most this apart, jittered to half-full.
PUSH_RETRY_MAX_SECONDS = 600
AUTH_SECRET_BYTES = 16
# Kinds a person should see at once (the device wakes): something waits for them.
HIGH_URGENCY_KINDS = frozenset(
    {
        NotificationKind.UPLOAD_FAILED,
        NotificationKind.UPLOAD_NEEDS_ATTENTION,
        NotificationKind.REPORT_ADDITIONAL_DATA_REQUIRED,
    }
)


@dataclass(frozen=True)
class PushStatus:
    vapid_public_key: str
    subscribed: bool
    enabled: bool


def _invalid(message: str) -> ApplicationError:
    return ApplicationError(
        "invalid_push_subscription",
        message,
        "Turn push notifications off and on again in Settings. If this happens again, "
        "this browser cannot receive them from RelayPACS.",
        status_code=400,
    )


def _push_off() -> ApplicationError:
    return ApplicationError(
        "push_not_configured",
        "Push notifications are not set up on this RelayPACS server.",
        "Ask your RelayPACS administrator to set them up; the app still shows "
        "notifications while it is open.",
        status_code=409,
    )


def _no_device() -> ApplicationError:
    return ApplicationError(
        "push_needs_signed_in_device",
        "Push notifications can only be turned on from a device signed in to the app.",
        "Sign in to the app on this device, then turn them on in Settings.",
        status_code=400,
    )


_reported: set[str] = set()


def _keys_or_none() -> vapid.VapidKeys | None:
    """The keys, or None with push off; a key that cannot be read or made (a malformed
    one, a read-only DATA_DIR, a file system without hard links) is logged once per
    process, not on every call."""
    try:
        return vapid.vapid_keys()
    except vapid.VapidKeyInvalid as exc:
        if str(exc) not in _reported:
            _reported.add(str(exc))
            logger.error("Web Push is off: %s", exc)
        return None


def push_status(*, session_id: uuid.UUID | None) -> PushStatus:
    """What the settings screen shows: the key to subscribe with, whether this device is
    subscribed, whether push works on this server."""
    keys = _keys_or_none()
    subscribed = (
        session_id is not None and PushSubscription.objects.filter(session_id=session_id).exists()
    )
    return PushStatus(
        vapid_public_key=keys.public_key if keys else "",
        subscribed=subscribed,
        enabled=keys is not None,
    )


def endpoint_check(endpoint: Any) -> str:
    """The endpoint if a push service could own it: https on port 443 to a host name that
    resolves to public addresses only (clients/webpush.endpoint_addresses), no credentials,
    a bounded length. WEB_PUSH_ALLOW_INSECURE_ENDPOINTS (tests; never in production) also
    lets http, any port and a loopback host through. Raises ApplicationError (400)."""
    if not isinstance(endpoint, str) or not endpoint:
        raise _invalid("The browser sent no address to deliver push notifications to.")
    if len(endpoint) > ENDPOINT_MAX_CHARS or any(c.isspace() for c in endpoint):
        raise _invalid("The browser's push address is not one a push service uses.")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise _invalid("The browser's push address is not one a push service uses.") from None
    if not host or parts.username or parts.password:
        raise _invalid("The browser's push address is not one a push service uses.")
    insecure_allowed = bool(settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS)
    http_allowed = insecure_allowed and webpush.is_loopback_host(host)
    if parts.scheme != "https" and not (parts.scheme == "http" and http_allowed):
        raise _invalid("The browser's push address is not a secure (https) address.")
    try:
        webpush.endpoint_addresses(endpoint=endpoint, allow_insecure=insecure_allowed)
    except webpush.EndpointRefused as refused:
        raise _invalid(str(refused)) from None
    return endpoint


def _key_check(value: Any, *, size: int, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise _invalid(f"The browser sent no valid {what} for push notifications.")
    try:
        raw = vapid.b64url_decode(value)
    except ValueError:
        raise _invalid(f"The browser sent no valid {what} for push notifications.") from None
    if len(raw) != size:
        raise _invalid(f"The browser sent no valid {what} for push notifications.")
    if size == P256DH_BYTES:
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise _invalid(f"The browser sent no valid {what} for push notifications.") from None
    return vapid.b64url_encode(raw)


@transaction.atomic
def push_subscription_save(
    *, user_id: int, session_id: uuid.UUID | None, subscription: dict[str, Any]
) -> bool:
    """Store ``subscription`` (``PushSubscription.toJSON()``) as the device's one; returns
    True when it is new, False when it replaced the device's earlier one.

    Locks the session row, so a sign-out racing with it either waits for this and then
    deletes it, or has ended the session and this is refused. The same endpoint under
    another session (another sign-in on this browser) is taken over. Raises
    ApplicationError: ``invalid_push_subscription`` (400), ``push_needs_signed_in_device``
    (400), ``push_not_configured`` (409), ``push_subscription_busy`` (409: another session
    saved this endpoint at the same moment, twice running). Keeps the user's
    MAX_SUBSCRIPTIONS_PER_USER most recently used subscriptions.
    """
    if _keys_or_none() is None:
        raise _push_off()
    if session_id is None:
        raise _no_device()
    endpoint = endpoint_check(subscription.get("endpoint"))
    keys = subscription.get("keys")
    if not isinstance(keys, dict):
        raise _invalid("The browser sent no encryption keys for push notifications.")
    p256dh = _key_check(keys.get("p256dh"), size=P256DH_BYTES, what="encryption key")
    auth = _key_check(keys.get("auth"), size=AUTH_SECRET_BYTES, what="authentication secret")
    session = (
        AuthSession.objects.select_for_update()
        .filter(pk=session_id, user_id=user_id, revoked_at__isnull=True)
        .first()
    )
    if session is None:
        raise _no_device()
    for attempt in (1, 2):
        try:
            with transaction.atomic():  # a savepoint: the retry starts from a clean state
                created = _subscription_store(
                    user_id=user_id,
                    session_id=session_id,
                    endpoint=endpoint,
                    p256dh=p256dh,
                    auth=auth,
                )
            break
        except IntegrityError:
            # Another session stored this endpoint at the same moment (the unique endpoint):
            # once it has committed, taking it over again succeeds.
            if attempt == 2:
                raise ApplicationError(
                    "push_subscription_busy",
                    "This browser's push notifications were being turned on from two "
                    "places at once.",
                    "Turn them on again in Settings.",
                    status_code=409,
                ) from None
    _subscriptions_over_cap_delete(user_id=user_id, keep_session_id=session_id)
    logger.info("push subscription of user %s saved (session %s)", user_id, session_id)
    return created


def _subscription_store(
    *, user_id: int, session_id: uuid.UUID, endpoint: str, p256dh: str, auth: str
) -> bool:
    PushSubscription.objects.filter(endpoint=endpoint).exclude(session_id=session_id).delete()
    now = timezone.now()
    _, created = PushSubscription.objects.update_or_create(
        session_id=session_id,
        defaults={
            "user_id": user_id,
            "endpoint": endpoint,
            "p256dh": p256dh,
            "auth": auth,
            "updated_at": now,
        },
        create_defaults={
            "user_id": user_id,
            "endpoint": endpoint,
            "p256dh": p256dh,
            "auth": auth,
            "created_at": now,
            "updated_at": now,
        },
    )
    return bool(created)


def _subscriptions_over_cap_delete(*, user_id: int, keep_session_id: uuid.UUID) -> int:
    """Keep the user's MAX_SUBSCRIPTIONS_PER_USER most recently used subscriptions (saved
    or delivered to), always the one just saved; delete the rest."""
    last_use = Greatest(F("updated_at"), Coalesce(F("last_delivered_at"), F("updated_at")))
    kept = list(
        PushSubscription.objects.filter(user_id=user_id)
        .exclude(session_id=keep_session_id)
        .annotate(last_use=last_use)
        .order_by("-last_use", "-pk")
        .values_list("pk", flat=True)[: MAX_SUBSCRIPTIONS_PER_USER - 1]
    )
    deleted = (
        PushSubscription.objects.filter(user_id=user_id)
        .exclude(session_id=keep_session_id)
        .exclude(pk__in=kept)
        .delete()[0]
    )
    if deleted:
        logger.info("%s oldest push subscriptions of user %s deleted", deleted, user_id)
    return int(deleted)


def _live(subscriptions: QuerySet[PushSubscription]) -> QuerySet[PushSubscription]:
    """Subscriptions that may be pushed to: the session not revoked and not idle past
    AUTH_SESSION_IDLE_TIMEOUT (what accounts treats as signed out), the user active."""
    idle_before = timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT
    return subscriptions.filter(
        session__revoked_at__isnull=True,
        session__last_seen_at__gte=idle_before,
        user__is_active=True,
    )


def push_subscription_delete(*, session_id: uuid.UUID | str | None) -> int:
    """Delete the device's subscription; idempotent. Returns how many were deleted (0 or 1)."""
    try:
        session = uuid.UUID(str(session_id)) if session_id is not None else None
    except ValueError:
        return 0
    if session is None:
        return 0
    deleted = PushSubscription.objects.filter(session_id=session).delete()[0]
    if deleted:
        logger.info("push subscription of session %s deleted", session_id)
    return int(deleted)


def push_subscriptions_of_ended_sessions_delete() -> int:
    """The safety net of ``account.session_revoked`` (a subscriber that failed, an event
    lost with its process): subscriptions whose session has ended, revoked or idle past
    AUTH_SESSION_IDLE_TIMEOUT (accounts revokes such a session only when it is next
    used). Idempotent."""
    idle_before = timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT
    return int(
        PushSubscription.objects.filter(
            Q(session__revoked_at__isnull=False) | Q(session__last_seen_at__lt=idle_before)
        ).delete()[0]
    )


def push_url(*, notification: Notification) -> str:
    """The PWA screen a click on the notification opens."""
    if notification.upload_id:
        return f"/#/study/{notification.upload_id}"
    if notification.report_id is not None:
        return f"/#/reports/{notification.report_id}"
    return "/#/notifications"


def push_tag(*, notification: Notification) -> str:
    """One shown notification per upload or report: a newer one replaces the earlier."""
    if notification.upload_id:
        return f"upload-{notification.upload_id}"
    if notification.report_id is not None:
        return f"report-{notification.report_id}"
    return f"notification-{notification.pk}"


def _unread_after(*, notification: Notification) -> int:
    """The unread count the notification's own event carried (the count right after it)."""
    if notification.event_seq is not None:
        data = (
            Event.objects.filter(user_id=notification.user_id, seq=notification.event_seq)
            .values_list("data", flat=True)
            .first()
        )
        if isinstance(data, dict) and isinstance(data.get("unread_count"), int):
            return int(data["unread_count"])
    return Notification.objects.filter(user_id=notification.user_id, read_at__isnull=True).count()


def push_payload(*, notification: Notification, unread: int) -> bytes:
    """The JSON a device's service worker receives: ``title``, ``body`` (texts.py's fixed
    words), ``url``, ``tag``, ``unread``, ``kind``, ``seq``, ``notification_id`` (a click
    marks it read). UTF-8, at most
    PAYLOAD_MAX_BYTES: a longer body is shortened (the title never is: texts are short)."""
    message = {
        "title": notification.title,
        "body": notification.body,
        "url": push_url(notification=notification),
        "tag": push_tag(notification=notification),
        "unread": unread,
        "kind": notification.kind,
        "seq": notification.event_seq or 0,
        "notification_id": notification.pk,
    }
    encoded = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    while len(encoded) > PAYLOAD_MAX_BYTES and message["body"]:
        # Cut the body by the bytes it is over (and the ellipsis' 3), on a character edge.
        over = len(encoded) - PAYLOAD_MAX_BYTES + len("…".encode())
        body = str(message["body"]).removesuffix("…").encode()
        kept = body[: max(0, len(body) - over)].decode("utf-8", errors="ignore").rstrip()
        message["body"] = kept + "…" if kept else ""
        encoded = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(encoded) <= PAYLOAD_MAX_BYTES, "a push payload is at most PAYLOAD_MAX_BYTES"
    return encoded


def notification_push_queue(*, notification_id: int, user_id: int) -> int:
    """Queue one delivery task per subscription of the user (call after commit); returns
    how many were queued. Nothing when Web Push is off."""
    from .tasks import push_deliver_task  # noqa: PLC0415 - tasks import this module

    if not settings.WEB_PUSH_ENABLED:
        return 0
    ids = list(_live(PushSubscription.objects.filter(user_id=user_id)).values_list("pk", flat=True))
    for subscription_id in ids:
        push_deliver_task.delay(notification_id=notification_id, subscription_id=subscription_id)
    return len(ids)


class PushServiceBusy(Exception):
    """The push service said "not now" (429, 5xx) or could not be reached: retry later."""

    def __init__(self, status_code: int | None, retry_after: float | None) -> None:
        super().__init__(f"push service busy ({status_code or 'no answer'})")
        self.status_code = status_code
        self.retry_after = retry_after


def push_retry_countdown(*, retries: int, retry_after: float | None) -> float:
    """Seconds before retry number ``retries + 1``: exponential backoff (1, 2, 4 … s,
    jittered between half and all of it), or the push service's Retry-After when it asks
    for longer; never more than PUSH_RETRY_MAX_SECONDS."""
    backoff = min(2.0**retries, PUSH_RETRY_MAX_SECONDS)
    backoff = random.uniform(backoff / 2, backoff)  # noqa: S311 - jitter, not a secret
    return min(max(retry_after or 0.0, backoff), PUSH_RETRY_MAX_SECONDS)


def push_deliver(*, notification_id: int, subscription_id: int) -> webpush.PushOutcome | None:
    """Push one notification to one subscription. Returns the outcome (None when the
    notification or subscription is gone, or push is off: nothing to do).

    404/410, a redirect, or an endpoint that no longer resolves to a public address: the
    subscription is deleted (by pk and endpoint, so a subscription renewed meanwhile
    stays). 429/5xx/no connection: raises PushServiceBusy (the task retries with
    backoff, or later if Retry-After says so). Any other refusal is logged and dropped. Safe to run
    twice: a second push of one notification carries the same ``tag`` (the device
    replaces the one it shows) and ``Topic`` (the service replaces an undelivered copy).
    Logs ids and statuses only: never the endpoint, the payload or a response body.
    """
    keys = _keys_or_none()
    notification = Notification.objects.filter(pk=notification_id).first()
    subscription = _live(PushSubscription.objects.filter(pk=subscription_id)).first()
    if keys is None or notification is None or subscription is None:
        return None
    if subscription.user_id != notification.user_id:
        return None
    payload = push_payload(
        notification=notification, unread=_unread_after(notification=notification)
    )
    result = webpush.push_send(
        target=webpush.PushTarget(subscription.endpoint, subscription.p256dh, subscription.auth),
        payload=payload,
        keys=keys,
        ttl_seconds=int(settings.WEB_PUSH_TTL_SECONDS),
        urgency="high" if notification.kind in HIGH_URGENCY_KINDS else "normal",
        topic=f"notification-{notification.pk}",
        allow_insecure=bool(settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS),
    )
    # By pk and endpoint: the device may have renewed its subscription while this push was
    # on its way, and the old endpoint's answer says nothing about the new one.
    this_one = PushSubscription.objects.filter(pk=subscription.pk, endpoint=subscription.endpoint)
    if result.outcome == webpush.PushOutcome.DELIVERED:
        this_one.update(last_delivered_at=timezone.now())
    elif result.outcome == webpush.PushOutcome.UNSAFE:
        this_one.delete()
        logger.warning(
            "push subscription %s of user %s deleted: its address is not a push service's (%s)",
            subscription.pk,
            subscription.user_id,
            f"it answered {result.status_code}" if result.status_code else "not a public address",
        )
    elif result.outcome == webpush.PushOutcome.GONE:
        this_one.delete()
        logger.info(
            "push subscription %s of user %s deleted: the push service answered %s",
            subscription.pk,
            subscription.user_id,
            result.status_code,
        )
    elif result.outcome == webpush.PushOutcome.BUSY:
        logger.warning(
            "push of notification %s to subscription %s not delivered yet: %s",
            notification.pk,
            subscription.pk,
            result.status_code or "no answer",
        )
        raise PushServiceBusy(result.status_code, result.retry_after)
    else:
        logger.error(
            "push of notification %s to subscription %s refused by the push service: %s",
            notification.pk,
            subscription.pk,
            result.status_code or "unusable subscription keys",
        )
    return result.outcome
