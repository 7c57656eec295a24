"""Everything about bytes: the S3 multipart writer, TorchScript archive export, manifests
and loading archives back.  Knows nothing of Celery.

Importing the package does not import torch (the ``fifo`` uploader process relies on it):
the torch-dependent names load on first use.
"""

from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in ("UploadOptions", "export_torchscript"):
        from . import torchscript

        return getattr(torchscript, name)
    raise AttributeError(f"module 'serializer' has no attribute {name!r}")
