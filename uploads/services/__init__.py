"""Every write and side effect of the upload pipeline."""

from .chunks import (
    ChunkReceipt,
    chunk_index_parse,
    chunk_receive,
    chunk_receive_signed_in,
    chunk_sender_ensure_owner,
    chunk_store,
    chunk_token_read,
    upload_token_user,
)
from .forwarding import upload_forward
from .ingest import (
    ManifestFile,
    UploadInit,
    manifest_parse,
    upload_cancel,
    upload_complete,
    upload_confirm,
    upload_init,
    upload_retry,
    upload_token_refresh,
)
from .maintenance import uploads_cleanup, uploads_redispatch
from .processing import upload_process

__all__ = [
    "ChunkReceipt",
    "ManifestFile",
    "UploadInit",
    "chunk_index_parse",
    "chunk_receive",
    "chunk_receive_signed_in",
    "chunk_sender_ensure_owner",
    "chunk_store",
    "chunk_token_read",
    "manifest_parse",
    "upload_cancel",
    "upload_complete",
    "upload_confirm",
    "upload_forward",
    "upload_init",
    "upload_process",
    "upload_retry",
    "upload_token_refresh",
    "upload_token_user",
    "uploads_cleanup",
    "uploads_redispatch",
]
