"""Notification API: the REST views (DRF) and the Server-Sent Events stream (async Django).

The stream is a plain async view, not DRF: DRF views are synchronous and would hold a
thread per open stream. It authenticates as the WebSocket does (live.stream_authenticate)
and answers errors in the one error shape.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from relaypacs.errors import ApplicationError, error_body
from relaypacs.openapi import error_responses
from uploads.tokens import UploadTokenClaim

from . import live, push, selectors, services
from .models import Notification, NotificationKind

logger = logging.getLogger(__name__)


class SignedInWithAccessToken(BasePermission):
    """Upload tokens open one upload only, never the notifications."""

    message = "Notifications need your sign-in, not an upload key."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user) and not isinstance(request.auth, UploadTokenClaim)


def _user_id(request: Request) -> int:
    user = request.user
    assert user is not None and user.pk is not None
    return int(user.pk)


class NotificationOutput(serializers.ModelSerializer):
    kind = serializers.ChoiceField(choices=NotificationKind.choices)
    read = serializers.SerializerMethodField()

    class Meta:
        model = Notification
        fields = [
            "id",
            "kind",
            "title",
            "body",
            "upload_id",
            "report_id",
            "created_at",
            "read",
            "read_at",
        ]

    def get_read(self, notification: Notification) -> bool:
        return notification.read_at is not None


class NotificationPagination(PageNumberPagination):
    # A notification centre's screenful or two; the list is two queries whatever its size.
    page_size = 30
    page_size_query_param = "page_size"
    max_page_size = 100
    unread_count = 0

    def get_paginated_response(self, data: Any) -> Response:
        response = super().get_paginated_response(data)
        response.data["unread_count"] = self.unread_count
        return response


class NotificationPageOutput(serializers.Serializer):
    """The page's shape, for the schema (an APIView is not paginated by drf-spectacular)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = NotificationOutput(many=True)
    unread_count = serializers.IntegerField(
        help_text="All unread notifications, whatever the filter."
    )


class NotificationListApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    class FilterSerializer(serializers.Serializer):
        unread = serializers.BooleanField(
            required=False,
            allow_null=True,
            default=None,
            help_text="true: unread only; false: read only.",
        )

    @extend_schema(
        operation_id="notifications_list",
        parameters=[
            FilterSerializer,
            OpenApiParameter("page", int, required=False),
            OpenApiParameter("page_size", int, required=False, description="At most 100."),
        ],
        responses={200: NotificationPageOutput, **error_responses(400, 401, 403, 404)},
        description="The signed-in user's notifications, newest first, with `unread_count` "
        "(all unread, whatever the filter).",
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        user_id = _user_id(request)
        paginator = NotificationPagination()
        paginator.unread_count = selectors.notifications_unread_count(user_id=user_id)
        queryset = selectors.notifications_for(
            user_id=user_id, unread=filters.validated_data.get("unread")
        )
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(NotificationOutput(page, many=True).data)


_MARKED = inline_serializer(
    "NotificationMarked",
    {"notification": NotificationOutput(), "unread_count": serializers.IntegerField()},
)


class _MarkApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]
    read = True

    def post(self, request: Request, notification_id: int) -> Response:
        user_id = _user_id(request)
        notification = services.notification_mark(
            user_id=user_id, notification_id=notification_id, read=self.read
        )
        return Response(
            {
                "notification": NotificationOutput(notification).data,
                "unread_count": selectors.notifications_unread_count(user_id=user_id),
            }
        )


class NotificationReadApi(_MarkApi):
    read = True

    @extend_schema(
        operation_id="notification_read",
        request=None,
        responses={200: _MARKED, **error_responses(401, 403, 404)},
        description="Mark one notification read (idempotent).",
    )
    def post(self, request: Request, notification_id: int) -> Response:
        return super().post(request, notification_id)


class NotificationUnreadApi(_MarkApi):
    read = False

    @extend_schema(
        operation_id="notification_unread",
        request=None,
        responses={200: _MARKED, **error_responses(401, 403, 404)},
        description="Mark one notification unread again (idempotent).",
    )
    def post(self, request: Request, notification_id: int) -> Response:
        return super().post(request, notification_id)


class NotificationReadAllApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    @extend_schema(
        operation_id="notifications_read_all",
        request=None,
        responses={
            200: inline_serializer(
                "NotificationsReadAll",
                {"marked": serializers.IntegerField(), "unread_count": serializers.IntegerField()},
            ),
            **error_responses(401, 403),
        },
    )
    def post(self, request: Request) -> Response:
        done = services.notifications_mark_all_read(user_id=_user_id(request))
        return Response({"marked": done.marked, "unread_count": done.unread_count})


class StreamTicketApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    @extend_schema(
        operation_id="notifications_ticket",
        request=None,
        responses={
            201: inline_serializer(
                "StreamTicket",
                {"ticket": serializers.CharField(), "expires_at": serializers.DateTimeField()},
            ),
            **error_responses(401, 403),
        },
        description="A single-use ticket, valid 30 seconds, for opening the stream from a URL "
        "(`/api/v1/notifications/stream?ticket=…` or `/ws/notifications?ticket=…`): "
        "EventSource and WebSocket cannot send an Authorization header, and an access "
        "token never goes in a URL. The stream it opens ends with this access token's "
        "session and expiry.",
    )
    def post(self, request: Request) -> Response:
        auth: Any = request.auth  # the validated access token (SignedInWithAccessToken)
        sid = auth.get("sid")
        ticket, expires_at = services.stream_ticket_issue(
            user_id=_user_id(request),
            session_id=uuid.UUID(str(sid)) if sid else None,
            access_expires_at=datetime.fromtimestamp(int(auth["exp"]), tz=UTC),
        )
        return Response({"ticket": ticket, "expires_at": expires_at}, status=201)


# --- Server-Sent Events -----------------------------------------------------------------


@csrf_exempt  # no cookie authentication here; other methods get the 405 error body
async def notifications_stream(request: HttpRequest) -> HttpResponseBase:
    """``GET /api/v1/notifications/stream``: the user's events as ``text/event-stream``.

    Auth: ``Authorization: Bearer <access token>`` or ``?ticket=``. Resume: the
    ``Last-Event-ID`` header (EventSource's own reconnect) or ``?last_event_id=`` (a new
    EventSource made with a new ticket). See docs/notifications.md.

    Under the ASGI application, GET requests are served by the lean endpoint in front of
    Django (sse_endpoint.py) with the same ``live.sse_open``; this view answers the rest
    (other methods, hosts not allowed, plain HTTP under SECURE_SSL_REDIRECT) and the tests
    that call Django directly.
    """
    if request.method != "GET":
        refused = JsonResponse(
            error_body(
                "method_not_allowed",
                "This request method is not supported here.",
                "Open the stream with GET; the API documentation is at /api/v1/docs/.",
            ),
            status=405,
        )
        refused["Allow"] = "GET"
        return refused
    try:
        body = await live.sse_open(
            authorization=request.headers.get("Authorization", ""),
            ticket=request.GET.get("ticket", ""),
            last_event_id=request.headers.get("Last-Event-ID") or request.GET.get("last_event_id"),
        )
    except ApplicationError as exc:
        response = JsonResponse(
            error_body(exc.code, exc.message, exc.hint, **exc.extra), status=exc.status_code
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    streaming = StreamingHttpResponse(body, content_type=live.SSE_CONTENT_TYPE)
    for name, value in live.SSE_HEADERS.items():
        streaming[name] = value
    return streaming


# --- Web Push subscriptions ---------------------------------------------------------------


def _session_id(request: Request) -> uuid.UUID | None:
    """The signed-in device (accounts AuthSession) of the access token, from its ``sid``."""
    auth: Any = request.auth
    sid = auth.get("sid") if auth is not None else None
    try:
        return uuid.UUID(str(sid)) if sid else None
    except ValueError:
        return None


_PUSH_STATUS = inline_serializer(
    "PushStatus",
    {
        "vapid_public_key": serializers.CharField(
            help_text="The server's VAPID public key (base64url, the uncompressed P-256 "
            "point): pushManager.subscribe's applicationServerKey. Empty when push is off."
        ),
        "subscribed": serializers.BooleanField(help_text="This device has a subscription."),
        "enabled": serializers.BooleanField(help_text="Web Push is set up on this server."),
    },
)
_SUBSCRIBED = inline_serializer("PushSubscribed", {"subscribed": serializers.BooleanField()})


class PushSubscriptionInput(serializers.Serializer):
    """``PushSubscription.toJSON()`` as the browser gives it (checked in push.py)."""

    endpoint = serializers.CharField()
    expirationTime = serializers.IntegerField(required=False, allow_null=True)  # noqa: N815
    keys = inline_serializer(
        "PushSubscriptionKeys",
        {"p256dh": serializers.CharField(), "auth": serializers.CharField()},
    )


class PushSubscriptionApi(APIView):
    """This device's Web Push subscription: one per signed-in device (docs/notifications.md)."""

    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    @extend_schema(
        operation_id="push_subscription_status",
        responses={200: _PUSH_STATUS, **error_responses(401, 403)},
        description="The VAPID public key to subscribe with, whether this device (the "
        "session of the access token) is subscribed, and whether push is set up.",
    )
    def get(self, request: Request) -> Response:
        status = push.push_status(session_id=_session_id(request))
        return Response(
            {
                "vapid_public_key": status.vapid_public_key,
                "subscribed": status.subscribed,
                "enabled": status.enabled,
            }
        )

    @extend_schema(
        operation_id="push_subscription_save",
        request=PushSubscriptionInput,
        responses={201: _SUBSCRIBED, 200: _SUBSCRIBED, **error_responses(400, 401, 403, 409)},
        description="Store `PushSubscription.toJSON()` as this device's subscription: 201 "
        "when new, 200 when it replaced this device's earlier one. Endpoints must be https.",
    )
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        created = push.push_subscription_save(
            user_id=_user_id(request), session_id=_session_id(request), subscription=body
        )
        return Response({"subscribed": True}, status=201 if created else 200)

    @extend_schema(
        operation_id="push_subscription_delete",
        request=None,
        responses={204: None, **error_responses(401, 403)},
        description="Delete this device's subscription (idempotent).",
    )
    def delete(self, request: Request) -> Response:
        push.push_subscription_delete(session_id=_session_id(request))
        return Response(status=204)
