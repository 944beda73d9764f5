"""Report API views: validate input, call one service or selector, serialise output."""

from __future__ import annotations

import uuid
from typing import Any

from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from relaypacs.openapi import error_responses
from uploads.models import ServiceLevel
from uploads.tokens import UploadTokenClaim

from . import selectors
from .models import Report, ReportStatus, ReportVersion
from .services import pdf, transitions


class ReportPagination(PageNumberPagination):
    # A worklist screen's worth; the list's queries do not grow with it (query-count test).
    page_size = 50


class SignedInWithAccessToken(BasePermission):
    """An upload token opens one upload only, never reports."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user) and not isinstance(request.auth, UploadTokenClaim)


class IsReader(BasePermission):
    """Radiologists (and administrators) read, sign and change reports."""

    message = "Only radiologists can change a report."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return getattr(request.user, "role", None) in selectors.READER_ROLES


class IsSender(BasePermission):
    """The sending side (clinicians, radiographers, administrators) answers questions."""

    message = "Only the sending clinic can answer the radiologist's question."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return getattr(request.user, "role", None) in selectors.SENDER_ROLES


class _PersonSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    full_name = serializers.CharField()


class _VersionSerializer(serializers.ModelSerializer):
    signed_by = serializers.CharField(source="signed_by_name")
    pdf_available = serializers.SerializerMethodField()

    class Meta:
        model = ReportVersion
        fields = [
            "number",
            "source",
            "signed_by",
            "signed_at",
            "superseded",
            "pdf_available",
            "pdf_sha256",
        ]

    def get_pdf_available(self, version: ReportVersion) -> bool:
        return bool(version.pdf_path)


class ReportOutput(serializers.ModelSerializer):
    upload_ids = serializers.SerializerMethodField()
    assignee = _PersonSerializer(allow_null=True)
    sender = _PersonSerializer(allow_null=True)
    signed_by = _PersonSerializer(allow_null=True)
    versions = _VersionSerializer(many=True)
    status_label = serializers.CharField(source="get_status_display")

    class Meta:
        model = Report
        fields = [
            "id",
            "status",
            "status_label",
            "upload_ids",
            "study_instance_uid",
            "facility",
            "service_level",
            "source",
            "assignee",
            "sender",
            "patient_name",
            "patient_id",
            "study_date",
            "study_description",
            "accession_number",
            "modality",
            "clinical_notes",
            "findings",
            "impression",
            "question",
            "answer",
            "signed_by",
            "signed_at",
            "signing",
            "versions",
            "created_at",
            "updated_at",
        ]

    def get_upload_ids(self, report: Report) -> list[str]:
        return [str(upload.pk) for upload in report.uploads.all()]


def _user(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def _report_response(request: Request, report_id: int) -> Response:
    report = selectors.report_get_for(report_id=report_id, user=_user(request))
    return Response(ReportOutput(report).data)


class ReportListApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=ReportStatus.values, required=False)
        modality = serializers.CharField(required=False, max_length=16)
        facility = serializers.IntegerField(required=False)
        service_level = serializers.ChoiceField(choices=ServiceLevel.values, required=False)
        date_from = serializers.DateField(required=False)
        date_to = serializers.DateField(required=False)
        sort = serializers.ChoiceField(
            choices=[f"{d}{f}" for f in selectors.SORT_FIELDS for d in ("", "-")],
            required=False,
            default="-date",
        )

    @extend_schema(
        operation_id="reports_list",
        parameters=[FilterSerializer, OpenApiParameter("page", int, required=False)],
        responses={200: ReportOutput(many=True), **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        queryset = selectors.reports_list(
            user=_user(request),
            status=data.get("status"),
            modality=data.get("modality"),
            facility_id=data.get("facility"),
            service_level=data.get("service_level"),
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
            sort=data["sort"],
        )
        paginator = ReportPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(ReportOutput(page, many=True).data)


class ReportDetailApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    @extend_schema(
        operation_id="report_detail",
        responses={200: ReportOutput, **error_responses(401, 404)},
    )
    def get(self, request: Request, report_id: int) -> Response:
        return _report_response(request, report_id)


class ReportForUploadApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]

    @extend_schema(
        operation_id="report_for_upload",
        responses={200: ReportOutput, **error_responses(401, 404)},
    )
    def get(self, request: Request, upload_id: uuid.UUID) -> Response:
        report = selectors.report_for_upload(upload_id=upload_id, user=_user(request))
        return Response(ReportOutput(report).data)


class _PdfRenderer(BaseRenderer):
    """Lets a client ask for ``Accept: application/pdf``; the PDF itself is streamed by a
    FileResponse, which no renderer touches."""

    media_type = "application/pdf"
    format = "pdf"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        raise AssertionError("errors are rendered as JSON (ReportDownloadApi.handle_exception)")


class ReportDownloadApi(APIView):
    permission_classes = [IsAuthenticated, SignedInWithAccessToken]
    renderer_classes = [JSONRenderer, _PdfRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        # An error is the one JSON error shape, also for a client that accepts only PDFs.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)

    @extend_schema(
        operation_id="report_download",
        parameters=[OpenApiParameter("version", int, required=False)],
        responses={
            (200, "application/pdf"): bytes,
            **error_responses(
                401,
                404,
                409,
                500,
                503,
                s409="report_not_ready: the report has no signed PDF yet.",
                s500="report_pdf_missing: the PDF is missing from the report store.",
                s503="report_store_unavailable: the report store cannot be reached just now.",
            ),
        },
    )
    def get(self, request: Request, report_id: int) -> FileResponse:
        report = selectors.report_get_for(report_id=report_id, user=_user(request))
        raw = request.query_params.get("version")
        number = serializers.IntegerField(min_value=1).run_validation(raw) if raw else None
        version, handle = pdf.report_pdf_open(report=report, number=number, user=_user(request))
        response = FileResponse(
            handle,
            content_type="application/pdf",
            as_attachment=True,
            filename=f"report-{report.pk}-v{version.number}.pdf",
        )
        response["Cache-Control"] = "private, no-store"
        return response


class _TextSerializer(serializers.Serializer):
    findings = serializers.CharField(required=False, allow_blank=True, default="")
    impression = serializers.CharField(required=False, allow_blank=True, default="")


class _SignSerializer(serializers.Serializer):
    findings = serializers.CharField(required=False, allow_blank=True)
    impression = serializers.CharField(required=False, allow_blank=True)


class _QuestionSerializer(serializers.Serializer):
    question = serializers.CharField()


class _AnswerSerializer(serializers.Serializer):
    answer = serializers.CharField()


class _CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class _TransitionApi(APIView):
    """POST one transition: 404 for a report the user cannot see, then the role check."""

    permission_classes = [IsAuthenticated, SignedInWithAccessToken]
    role_permission: type[BasePermission] = IsReader
    input_serializer: type[serializers.Serializer] | None = None

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def post(self, request: Request, report_id: int) -> Response:
        user = _user(request)
        selectors.report_get_for(report_id=report_id, user=user)
        permission = self.role_permission()
        if not permission.has_permission(request, self):
            self.permission_denied(request, message=getattr(permission, "message", None))
        data: dict[str, Any] = {}
        if self.input_serializer is not None:
            serializer = self.input_serializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = dict(serializer.validated_data)
        self.act(report_id=report_id, user=user, data=data)
        return _report_response(request, report_id)


def _transition_schema(operation_id: str, request: Any = None) -> Any:
    return extend_schema(
        operation_id=operation_id,
        request=request,
        responses={200: ReportOutput, **error_responses(400, 401, 403, 404, 409)},
    )


class ReportClaimApi(_TransitionApi):
    @_transition_schema("report_claim")
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_claim(report_id=report_id, actor=user)


class ReportDraftApi(_TransitionApi):
    input_serializer = _TextSerializer

    @_transition_schema("report_draft_save", _TextSerializer)
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_draft_save(
            report_id=report_id,
            actor=user,
            findings=data["findings"],
            impression=data["impression"],
        )


class ReportSignApi(_TransitionApi):
    input_serializer = _SignSerializer

    @_transition_schema("report_sign", _SignSerializer)
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_sign(
            report_id=report_id,
            actor=user,
            findings=data.get("findings"),
            impression=data.get("impression"),
        )


class ReportAskApi(_TransitionApi):
    input_serializer = _QuestionSerializer

    @_transition_schema("report_ask", _QuestionSerializer)
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_ask(report_id=report_id, actor=user, question=data["question"])


class ReportAmendApi(_TransitionApi):
    input_serializer = _TextSerializer

    @_transition_schema("report_amend", _TextSerializer)
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_amend(
            report_id=report_id,
            actor=user,
            findings=data["findings"],
            impression=data["impression"],
        )


class ReportCancelApi(_TransitionApi):
    input_serializer = _CancelSerializer

    @_transition_schema("report_cancel", _CancelSerializer)
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_cancel(report_id=report_id, actor=user, reason=data["reason"])


class ReportReplyApi(_TransitionApi):
    role_permission = IsSender
    input_serializer = _AnswerSerializer

    @_transition_schema("report_reply", _AnswerSerializer)
    def post(self, request: Request, report_id: int) -> Response:
        return super().post(request, report_id)

    def act(self, *, report_id: int, user: User, data: dict[str, Any]) -> None:
        transitions.report_reply(report_id=report_id, actor=user, answer=data["answer"])
