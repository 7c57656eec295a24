"""Everything about bytes: the S3 multipart writer, TorchScript archive export, manifests
and loading archives back.  Knows nothing of Celery."""

from .archive import ArchiveInfo
from .client import make_s3_client
from .errors import (
    ArchiveError,
    InvalidExtraFile,
    InvalidURI,
    ManifestError,
    ObjectExists,
    SerializerError,
    UploadFailed,
)
from .manifest import Manifest, build_manifest, manifest_uri_for, read_manifest, write_manifest
from .multipart import MultipartWriter, UploadResult
from .torchscript import UploadOptions, export_torchscript

__all__ = [
    "ArchiveError",
    "ArchiveInfo",
    "InvalidExtraFile",
    "InvalidURI",
    "Manifest",
    "ManifestError",
    "MultipartWriter",
    "ObjectExists",
    "SerializerError",
    "UploadFailed",
    "UploadOptions",
    "UploadResult",
    "build_manifest",
    "export_torchscript",
    "make_s3_client",
    "manifest_uri_for",
    "read_manifest",
    "write_manifest",
]
