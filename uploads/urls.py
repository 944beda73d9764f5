from django.urls import path

from . import apis

urlpatterns = [
    path("health", apis.HealthApi.as_view(), name="health"),
    path("uploads", apis.UploadListApi.as_view(), name="uploads-list"),
    path("upload/init", apis.UploadInitApi.as_view(), name="upload-init"),
    path("upload/<uuid:upload_id>", apis.UploadCancelApi.as_view(), name="upload-cancel"),
    path("upload/<uuid:upload_id>/chunk", apis.ChunkApi.as_view(), name="upload-chunk"),
    path("upload/<uuid:upload_id>/status", apis.UploadStatusApi.as_view(), name="upload-status"),
    path(
        "upload/<uuid:upload_id>/complete", apis.UploadCompleteApi.as_view(), name="upload-complete"
    ),
    path("upload/<uuid:upload_id>/confirm", apis.UploadConfirmApi.as_view(), name="upload-confirm"),
    path("upload/<uuid:upload_id>/retry", apis.UploadRetryApi.as_view(), name="upload-retry"),
    path("upload/<uuid:upload_id>/token", apis.UploadTokenApi.as_view(), name="upload-token"),
]
