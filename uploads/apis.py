"""Upload API views: validate input, call one service, serialise output."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from kombu import Connection
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import SessionJWTAuthentication
from accounts.models import Role
from pacs import selectors as pacs_selectors
from pacs import services as pacs_services
from relaypacs.openapi import error_responses

from . import services, storage
from .metrics import chunk_request
from .models import UploadSession, UploadState
from .permissions import AccessTokenOnly
from .selectors import upload_expires_at, upload_get_for, upload_status, uploads_list


class _ManifestFileSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="File name, with its relative path for folders.")
    size = serializers.IntegerField(min_value=0)
    sha256 = serializers.CharField(required=False, help_text="Hex SHA-256 of the file.")


class _MetadataSerializer(serializers.Serializer):
    patient_name = serializers.CharField(required=False)
    patient_id = serializers.CharField(required=False)
    patient_birth_date = serializers.CharField(required=False, help_text="YYYYMMDD or YYYY-MM-DD")
    patient_sex = serializers.CharField(required=False)
    study_date = serializers.CharField(required=False, help_text="YYYYMMDD or YYYY-MM-DD")
    modality = serializers.CharField(required=False)
    study_description = serializers.CharField(required=False)
    accession_number = serializers.CharField(required=False)
    study_instance_uid = serializers.CharField(
        required=False,
        help_text="Images added to an earlier study (one this account may see): photos join it",
    )


class UploadInitRequest(serializers.Serializer):
    files = _ManifestFileSerializer(many=True)
    metadata = _MetadataSerializer(required=False)
    clinical_notes = serializers.CharField(required=False)
    service_level = serializers.ChoiceField(
        choices=["routine", "urgent", "emergency", "stat"], required=False
    )
    chunk_size = serializers.IntegerField(
        required=False, help_text="256 KiB to 16 MiB; default 1 MiB"
    )
    allow_partial = serializers.BooleanField(required=False, default=False)
    force_upload = serializers.BooleanField(required=False, default=False)


UploadInitResponse = inline_serializer(
    "UploadInitResponse",
    {
        "upload_id": serializers.UUIDField(),
        "upload_token": serializers.CharField(),
        "chunk_size": serializers.IntegerField(),
        "total_size": serializers.IntegerField(),
        "total_chunks": serializers.IntegerField(),
        "expires_at": serializers.DateTimeField(),
    },
)
ChunkResponse = inline_serializer(
    "ChunkResponse",
    {
        "index": serializers.IntegerField(),
        "received": serializers.BooleanField(),
        "bytes_received": serializers.IntegerField(),
        "max_in_flight": serializers.IntegerField(
            required=False,
            help_text=(
                "Only when the server is busy (the chunk waited longer than "
                "UPLOAD_CHUNK_BUSY_SECONDS for a thread): send at most this many chunks at "
                "once for a while."
            ),
        ),
    },
)
StateResponse = inline_serializer("StateResponse", {"state": serializers.CharField()})
StatusResponse = inline_serializer(
    "UploadStatus",
    {
        "upload_id": serializers.UUIDField(),
        "state": serializers.CharField(),
        "bytes_received": serializers.IntegerField(),
        "total_size": serializers.IntegerField(),
        "missing_chunks": serializers.ListField(child=serializers.IntegerField()),
        "studies": serializers.ListField(child=serializers.DictField()),
        "pacs": serializers.DictField(),
        "rejected_files": serializers.ListField(child=serializers.DictField()),
        "skipped_files": serializers.ListField(child=serializers.DictField()),
        "warnings": serializers.ListField(child=serializers.CharField()),
        "error": serializers.DictField(allow_null=True),
        "expires_at": serializers.DateTimeField(),
    },
)


class _RawBodyParser(BaseParser):
    """Declares octet-stream bodies; the chunk view reads the raw stream itself."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream


def _upload(request: Request, upload_id: uuid.UUID) -> UploadSession:
    return upload_get_for(upload_id=upload_id, user=request.user, auth=request.auth)  # type: ignore[arg-type]


def _sign_in_session(request: Request) -> str | None:
    """The sign-in session (``sid``) of the access token, which upload tokens end with."""
    sid = request.auth.get("sid") if request.auth is not None else None  # type: ignore[union-attr]
    return str(sid) if sid is not None else None


class UploadInitApi(APIView):
    permission_classes = [IsAuthenticated, AccessTokenOnly]

    @extend_schema(
        operation_id="upload_init",
        request=UploadInitRequest,
        responses={
            201: UploadInitResponse,
            **error_responses(
                400,
                401,
                403,
                409,
                413,
                507,
                s403="permission_denied: a role that does not send studies, or an upload "
                "token; account_pending_approval: the account waits for an administrator.",
                s409="possible_duplicate: a study with the same patient name, date and modality "
                "was uploaded in the last 30 days (duplicate_of names it); resend with force_upload.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        parsed = services.manifest_parse(data=request.data)
        session = services.upload_init(owner=request.user, request=parsed)  # type: ignore[arg-type]
        return Response(
            {
                "upload_id": str(session.id),
                "upload_token": services.upload_token_refresh(
                    session=session,
                    user=request.user,  # type: ignore[arg-type]
                    session_id=_sign_in_session(request),
                ),
                "chunk_size": session.chunk_size,
                "total_size": session.total_size,
                "total_chunks": session.total_chunks,
                "expires_at": upload_expires_at(session=session).isoformat(),
            },
            status=status.HTTP_201_CREATED,
        )


class ChunkApi(APIView):
    parser_classes = [_RawBodyParser]

    @extend_schema(
        operation_id="upload_chunk",
        parameters=[
            OpenApiParameter("index", int, required=True, description="Chunk number, from 0."),
            OpenApiParameter(
                "Content-MD5",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="Base64 of the MD5 of the body.",
            ),
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[503],
                description="Seconds to wait before sending the chunk again (server_busy).",
            ),
        ],
        request={"application/octet-stream": {"type": "string", "format": "binary"}},
        responses={
            200: ChunkResponse,
            **error_responses(
                400,
                401,
                403,
                404,
                409,
                422,
                s403="permission_denied: only the upload's owner sends its chunks.",
                s409="chunk_conflict (different bytes for a stored chunk) or upload_not_receiving.",
            ),
            **error_responses(
                503,
                s503=(
                    "server_busy: the web process holds as many chunk bytes as its memory "
                    "budget allows and this chunk waited too long; nothing stored, send it "
                    "again (Retry-After)."
                ),
            ),
        },
    )
    def put(self, request: Request, upload_id: uuid.UUID) -> Response:
        with chunk_request() as counted:
            session = _upload(request, upload_id)
            services.chunk_sender_ensure_owner(session=session, user_id=request.user.pk)
            index = services.chunk_index_parse(request.query_params.get("index"))
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            receipt = counted.receipt = services.chunk_store(
                session=session,
                index=index,
                body=request._request,  # noqa: SLF001 - the raw stream, unparsed
                length=length,
                content_md5=request.headers.get("Content-MD5"),
            )
        return Response(
            {"index": receipt.index, "received": True, "bytes_received": receipt.bytes_received}
        )


class UploadStatusApi(APIView):
    @extend_schema(
        operation_id="upload_status", responses={200: StatusResponse, **error_responses(401, 404)}
    )
    def get(self, request: Request, upload_id: uuid.UUID) -> Response:
        return Response(upload_status(session=_upload(request, upload_id)))


class UploadCompleteApi(APIView):
    @extend_schema(
        operation_id="upload_complete",
        request=None,
        parameters=[
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[503],
                description="Seconds to wait before sending the chunks again and completing.",
            ),
        ],
        responses={
            202: StateResponse,
            **error_responses(
                401,
                404,
                409,
                503,
                s409=(
                    "upload_incomplete (missing_chunks lists what to send: chunks not sent "
                    "yet, or acknowledged ones the server lost in a power cut or crash "
                    "before complete) or upload_not_receiving."
                ),
                s503=(
                    "storage_unavailable: the server's disk refused to store the upload; "
                    "every chunk is forgotten, send them again after Retry-After."
                ),
            ),
        },
    )
    def post(self, request: Request, upload_id: uuid.UUID) -> Response:
        session = services.upload_complete(session=_upload(request, upload_id))
        return Response({"state": session.state}, status=status.HTTP_202_ACCEPTED)


class UploadConfirmApi(APIView):
    @extend_schema(
        operation_id="upload_confirm",
        request=None,
        responses={
            202: StateResponse,
            **error_responses(401, 404, 409, s409="nothing_to_confirm"),
        },
    )
    def post(self, request: Request, upload_id: uuid.UUID) -> Response:
        session = services.upload_confirm(session=_upload(request, upload_id))
        return Response({"state": session.state}, status=status.HTTP_202_ACCEPTED)


class UploadRetryApi(APIView):
    @extend_schema(
        operation_id="upload_retry",
        request=None,
        responses={
            202: StateResponse,
            **error_responses(401, 404, 409, s409="nothing_to_retry"),
        },
    )
    def post(self, request: Request, upload_id: uuid.UUID) -> Response:
        session = services.upload_retry(session=_upload(request, upload_id))
        return Response({"state": session.state}, status=status.HTTP_202_ACCEPTED)


class UploadTokenApi(APIView):
    permission_classes = [IsAuthenticated, AccessTokenOnly]

    @extend_schema(
        operation_id="upload_token",
        request=None,
        responses={
            200: inline_serializer("UploadToken", {"upload_token": serializers.CharField()}),
            **error_responses(
                401,
                403,
                404,
                s403="permission_denied: upload tokens go to the upload's owner only.",
            ),
        },
    )
    def post(self, request: Request, upload_id: uuid.UUID) -> Response:
        session = _upload(request, upload_id)
        token = services.upload_token_refresh(
            session=session,
            user=request.user,  # type: ignore[arg-type]
            session_id=_sign_in_session(request),
        )
        return Response({"upload_token": token})


class UploadCancelApi(APIView):
    @extend_schema(
        operation_id="upload_cancel",
        responses={
            204: None,
            **error_responses(401, 404, 409, s409="upload_completed"),
        },
    )
    def delete(self, request: Request, upload_id: uuid.UUID) -> Response:
        services.upload_cancel(
            session=_upload(request, upload_id),
            actor=request.user,  # type: ignore[arg-type]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class UploadListApi(APIView):
    permission_classes = [IsAuthenticated, AccessTokenOnly]

    class OutputSerializer(serializers.ModelSerializer):
        upload_id = serializers.UUIDField(source="id")

        class Meta:
            model = UploadSession
            fields = [
                "upload_id",
                "state",
                "total_size",
                "service_level",
                "created_at",
                "completed_at",
                "error",
            ]

    @extend_schema(
        operation_id="uploads_list",
        parameters=[OpenApiParameter("state", str, enum=UploadState.values, required=False)],
        responses={200: OutputSerializer(many=True), **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        queryset = uploads_list(user=request.user, state=request.query_params.get("state"))  # type: ignore[arg-type]
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


def _check_database() -> tuple[str, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok", connection.vendor
    except Exception as exc:
        return "failing", f"database unreachable ({type(exc).__name__})"


def _check_broker() -> tuple[str, str]:
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        writable = settings.BROKER_DIR.is_dir()
        return ("ok", "embedded") if writable else ("failing", "broker folder missing")
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok", "connected"
    except Exception as exc:
        return "failing", f"broker unreachable ({type(exc).__name__})"


def _check_pacs() -> list[pacs_selectors.PacsHealth]:
    """Each PACS target's health from the shared, rate-limited probe (pacs.services)."""
    try:
        return pacs_services.pacs_health_probes(targets=pacs_selectors.pacs_targets())
    except DatabaseError:
        # The targets and the stored probes live in the database, which the database
        # check reports as failing already.
        return []


def _is_admin(request: Request) -> bool:
    return getattr(request.user, "role", None) == Role.ADMIN


_HEALTH_CHECKS = inline_serializer(
    "HealthChecks",
    {
        "database": serializers.DictField(),
        "broker": serializers.DictField(),
        "storage": serializers.DictField(),
        "pacs": serializers.ListField(child=serializers.DictField()),
    },
)


class HealthApi(APIView):
    """Anonymous callers get the overall status and the HTTP code only; signed-in
    administrators also get each part's state and a sentence about it."""

    permission_classes = [AllowAny]
    authentication_classes = [SessionJWTAuthentication]

    def perform_authentication(self, request: Request) -> None:
        # No token is needed here: a missing, expired or revoked one only means the
        # anonymous answer, never a 401 that a load balancer would read as "down".
        try:
            request.user  # noqa: B018 - authenticates
        except exceptions.APIException:
            pass

    @extend_schema(
        operation_id="health",
        description=(
            "200 while the database, the broker and the upload storage work (`degraded` "
            "when a PACS is not reachable: uploads are kept and delivered later), 503 when "
            "one of those three fails. `checks` is given to administrators only. Each PACS "
            "is probed at most once every 30 seconds, whoever asks; an S3 upload storage at "
            "most once every 30 seconds per server process (a HEAD of the bucket, and a "
            "write probe every 5 minutes)."
        ),
        responses={
            200: inline_serializer(
                "Health",
                {"status": serializers.CharField(), "checks": _HEALTH_CHECKS},
            ),
            503: inline_serializer(
                "HealthFailing",
                {"status": serializers.CharField(), "checks": _HEALTH_CHECKS},
            ),
        },
    )
    def get(self, request: Request) -> Response:
        checks: dict[str, Any] = {}
        for name, check in (
            ("database", _check_database),
            ("broker", _check_broker),
            ("storage", storage.storage_check),
        ):
            state, detail = check()
            checks[name] = {"state": state, "detail": detail}
        checks["pacs"] = _check_pacs() if checks["database"]["state"] == "ok" else []
        failing = any(checks[n]["state"] == "failing" for n in ("database", "broker", "storage"))
        degraded = any(p["state"] != "ok" for p in checks["pacs"]) or not checks["pacs"]
        overall = "failing" if failing else ("degraded" if degraded else "ok")
        body: dict[str, Any] = {"status": overall}
        if _is_admin(request):
            body["checks"] = checks
        return Response(
            body,
            status=status.HTTP_503_SERVICE_UNAVAILABLE if failing else status.HTTP_200_OK,
        )
