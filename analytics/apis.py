"""Upload statistics API: validate the query, call one selector, answer."""

from __future__ import annotations

import uuid
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from relaypacs.errors import ApplicationError
from relaypacs.openapi import error_responses
from uploads.models import ServiceLevel
from uploads.permissions import AccessTokenOnly
from uploads.selectors import upload_get_for

from . import selectors, services

_S403 = (
    "permission_denied: radiologists and auditors get no upload statistics, or a facility "
    "other than yours; no_facility: your account belongs to no facility; "
    "account_pending_approval."
)


class StatsQuery(serializers.Serializer):
    period = serializers.ChoiceField(
        choices=list(selectors.PERIODS),
        required=False,
        default=selectors.DEFAULT_PERIOD,
        help_text="1w, 2w, 1m (30 days), 3m (91), 6m (182) or all; days end today (TIME_ZONE).",
    )
    facility = serializers.CharField(
        required=False, max_length=50, help_text="A facility id or code (administrators)."
    )
    modality = serializers.CharField(required=False, max_length=16, help_text="e.g. CT, MR, XC.")
    service_level = serializers.ChoiceField(choices=ServiceLevel.values, required=False)


def _filters(request: Request) -> selectors.StatsFilters:
    query = StatsQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    data = query.validated_data
    return selectors.StatsFilters(
        period=data["period"],
        facility=data.get("facility") or None,
        modality=data.get("modality") or None,
        service_level=data.get("service_level") or None,
    )


def _user(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101 - IsAuthenticated let only a User through
    return user


_Figures: dict[str, Any] = {
    "uploads": serializers.IntegerField(),
    "bytes": serializers.IntegerField(),
    "completed": serializers.IntegerField(),
    "failed": serializers.IntegerField(),
    "cancelled": serializers.IntegerField(),
    "in_progress": serializers.IntegerField(),
    "success_rate": serializers.FloatField(allow_null=True),
    "average_upload_seconds": serializers.FloatField(allow_null=True),
}
UploadStatsResponse = inline_serializer(
    "UploadStats",
    {
        "period": serializers.CharField(),
        "since": serializers.DateField(),
        "until": serializers.DateField(),
        "filters": serializers.DictField(),
        "scope": serializers.ChoiceField(choices=["all_facilities", "facility"]),
        "facility_id": serializers.IntegerField(allow_null=True),
        "total_uploads": serializers.IntegerField(),
        "total_bytes": serializers.IntegerField(),
        "outcomes": serializers.DictField(child=serializers.IntegerField()),
        "success_rate": serializers.FloatField(
            allow_null=True, help_text="completed / (completed + failed); null without either."
        ),
        "average_upload_seconds": serializers.FloatField(
            allow_null=True, help_text="init → PACS receipt, completed uploads."
        ),
        "average_parts_seconds": inline_serializer(
            "UploadStatsParts",
            {
                "transfer": serializers.FloatField(allow_null=True),
                "processing": serializers.FloatField(allow_null=True),
                "confirmation": serializers.FloatField(allow_null=True),
                "forwarding": serializers.FloatField(allow_null=True),
            },
        ),
        "by_modality": inline_serializer(
            "UploadStatsModality", {"modality": serializers.CharField(), **_Figures}, many=True
        ),
        "by_service_level": inline_serializer(
            "UploadStatsServiceLevel",
            {"service_level": serializers.CharField(), **_Figures},
            many=True,
        ),
        "daily": inline_serializer(
            "UploadStatsDay", {"date": serializers.DateField(), **_Figures}, many=True
        ),
        "by_facility": inline_serializer(
            "UploadStatsFacility",
            {
                "facility_id": serializers.IntegerField(allow_null=True),
                "facility_code": serializers.CharField(allow_null=True),
                "facility_name": serializers.CharField(),
                **_Figures,
            },
            many=True,
            required=False,
            help_text="Administrators only.",
        ),
        "retries": inline_serializer(
            "UploadStatsRetries",
            {
                "pacs_retries": serializers.IntegerField(),
                "manual_retries": serializers.IntegerField(),
                "uploads_retried": serializers.IntegerField(),
                "uploads_retried_rate": serializers.FloatField(allow_null=True),
            },
        ),
        "network": inline_serializer(
            "UploadStatsNetwork",
            {
                "uploads_reported": serializers.IntegerField(),
                "average_throughput_bytes_per_second": serializers.IntegerField(allow_null=True),
                "outages": serializers.IntegerField(),
                "outage_seconds": serializers.FloatField(),
                "retried_chunks": serializers.IntegerField(),
                "retried_chunks_per_upload": serializers.FloatField(allow_null=True),
            },
        ),
        "generated_at": serializers.DateTimeField(),
        "cached": serializers.BooleanField(),
    },
)


class UploadStatsApi(APIView):
    permission_classes = [IsAuthenticated, AccessTokenOnly]

    @extend_schema(
        operation_id="upload_stats",
        summary="Upload statistics of a period (clinic staff: their facility; admins: all)",
        description="Read from daily rollups kept up to date by the upload pipeline's "
        "events; cached for 60 seconds and refreshed as soon as an upload ends. See "
        "docs/analytics.md.",
        parameters=[StatsQuery],
        responses={200: UploadStatsResponse, **error_responses(400, 401, 403, s403=_S403)},
    )
    def get(self, request: Request) -> Response:
        answer, cached = selectors.upload_stats_cached(
            user=_user(request), filters=_filters(request)
        )
        return Response({**answer, "cached": cached})


class UploadStatsExportApi(APIView):
    permission_classes = [IsAuthenticated, AccessTokenOnly]

    @extend_schema(
        operation_id="upload_stats_export_csv",
        summary="The statistics' daily rollup rows as CSV, streamed",
        parameters=[StatsQuery],
        responses={
            (200, "text/csv"): OpenApiResponse(
                {"type": "string"},
                description="One row per day × facility × modality × service level × outcome.",
            ),
            **error_responses(400, 401, 403, s403=_S403),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        filters = _filters(request)
        lines = selectors.stats_csv_rows(user=_user(request), filters=filters)
        response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="relaypacs-upload-stats-{filters.period}.csv"'
        )
        return response


class TelemetryRequest(serializers.Serializer):
    bytes_sent = serializers.IntegerField(
        min_value=0, required=False, default=0, help_text="Bytes of chunks sent, retries included."
    )
    active_seconds = serializers.FloatField(
        min_value=0, required=False, default=0, help_text="Seconds spent sending (online)."
    )
    outages = serializers.IntegerField(
        min_value=0, required=False, default=0, help_text="Times the network went away."
    )
    offline_seconds = serializers.FloatField(
        min_value=0, required=False, default=0, help_text="Seconds without network."
    )
    retried_chunks = serializers.IntegerField(
        min_value=0, required=False, default=0, help_text="Chunk requests sent again."
    )


class UploadTelemetryApi(APIView):
    @extend_schema(
        operation_id="upload_telemetry",
        summary="The network the app saw while sending this upload (optional)",
        description="Totals for the upload; a later report replaces an earlier one. The "
        "upload's owner only (access or upload token).",
        request=TelemetryRequest,
        responses={
            204: None,
            **error_responses(
                400, 401, 403, 404, s403="permission_denied: only the upload's owner reports."
            ),
        },
    )
    def post(self, request: Request, upload_id: uuid.UUID) -> Response:
        session = upload_get_for(upload_id=upload_id, user=request.user, auth=request.auth)  # type: ignore[arg-type]
        if session.owner_id != request.user.pk:
            raise ApplicationError(
                "permission_denied",
                "Only the person who sent this upload reports its network figures.",
                "Nothing needs doing: the sender's app reports them.",
                status_code=status.HTTP_403_FORBIDDEN,
            )
        data = TelemetryRequest(data=request.data)
        data.is_valid(raise_exception=True)
        report: dict[str, Any] = data.validated_data
        services.upload_telemetry_record(
            upload_id=session.id, report=services.NetworkReport(**report)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
