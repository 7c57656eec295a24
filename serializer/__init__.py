"""Everything about bytes: the S3 transport, archives as zips, manifests, the two archive
formats (TorchScript and ``torch.export``'s ``.pt2``) and the consumer side.  Knows nothing
of Celery.

This module is the public surface.  Its names load on first use, so ``import serializer``
imports neither torch nor boto3 (the ``fifo`` uploader process and ``exportctl ls`` rely on
it).  Sub-packages, each importing only those below it::

    consumer/     compatibility, extra files by range, open, verify
    torchscript/  pt2/   the two formats, matching export_* and load_*; never each other
    signing/      signed exports: keys, the OpenSSF model-signing bundle, its S3 check
    manifest/     the manifest model, and its S3 store
    archive/      zip index, archive info, extra-file rules, spool and fifo uploads
    s3/           URIs, client, retry, parts, the multipart writer, ranged reads
    errors, formats
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .archive.info import ArchiveInfo
    from .consumer.compare import compare_outputs
    from .consumer.compat import Compatibility, check_compatibility, local_reader
    from .consumer.extras import read_extra_file
    from .consumer.open import open_artifact, read_manifest_checked
    from .consumer.verify import VerifyReport, verify_artifact
    from .errors import (
        ArchiveError,
        InvalidExtraFile,
        InvalidURI,
        ManifestError,
        ObjectExists,
        SerializerError,
        SignatureError,
        UploadFailed,
    )
    from .formats import FORMATS, Format
    from .manifest.model import Manifest, build_manifest, manifest_uri_for
    from .manifest.store import read_manifest, write_manifest
    from .producer import current_producer
    from .pt2.export import export_pt2
    from .pt2.load import load_pt2_artifact, load_pt2_file
    from .s3.client import S3Client, make_s3_client
    from .s3.multipart import MultipartWriter, UploadResult
    from .s3.options import UploadOptions
    from .s3.uri import S3URI, parse_s3_uri
    from .signing.keys import SigningKey, TrustedKeys
    from .torchscript.export import export_torchscript
    from .torchscript.load import load_artifact

#: Public name -> the module that defines it.
_SOURCES = {
    "ArchiveError": ".errors",
    "InvalidExtraFile": ".errors",
    "InvalidURI": ".errors",
    "ManifestError": ".errors",
    "ObjectExists": ".errors",
    "SerializerError": ".errors",
    "SignatureError": ".errors",
    "UploadFailed": ".errors",
    "FORMATS": ".formats",
    "Format": ".formats",
    "S3Client": ".s3.client",
    "current_producer": ".producer",
    "make_s3_client": ".s3.client",
    "S3URI": ".s3.uri",
    "parse_s3_uri": ".s3.uri",
    "MultipartWriter": ".s3.multipart",
    "UploadResult": ".s3.multipart",
    "UploadOptions": ".s3.options",
    "ArchiveInfo": ".archive.info",
    "SigningKey": ".signing.keys",
    "TrustedKeys": ".signing.keys",
    "Manifest": ".manifest.model",
    "build_manifest": ".manifest.model",
    "manifest_uri_for": ".manifest.model",
    "read_manifest": ".manifest.store",
    "write_manifest": ".manifest.store",
    "export_torchscript": ".torchscript.export",
    "load_artifact": ".torchscript.load",
    "export_pt2": ".pt2.export",
    "load_pt2_artifact": ".pt2.load",
    "load_pt2_file": ".pt2.load",
    "Compatibility": ".consumer.compat",
    "check_compatibility": ".consumer.compat",
    "local_reader": ".consumer.compat",
    "compare_outputs": ".consumer.compare",
    "read_extra_file": ".consumer.extras",
    "open_artifact": ".consumer.open",
    "read_manifest_checked": ".consumer.open",
    "VerifyReport": ".consumer.verify",
    "verify_artifact": ".consumer.verify",
}

__all__ = [
    "FORMATS",
    "S3URI",
    "ArchiveError",
    "ArchiveInfo",
    "Compatibility",
    "Format",
    "InvalidExtraFile",
    "InvalidURI",
    "Manifest",
    "ManifestError",
    "MultipartWriter",
    "ObjectExists",
    "S3Client",
    "SerializerError",
    "SignatureError",
    "SigningKey",
    "TrustedKeys",
    "UploadFailed",
    "UploadOptions",
    "UploadResult",
    "VerifyReport",
    "build_manifest",
    "check_compatibility",
    "compare_outputs",
    "current_producer",
    "export_pt2",
    "export_torchscript",
    "load_artifact",
    "load_pt2_artifact",
    "load_pt2_file",
    "local_reader",
    "make_s3_client",
    "manifest_uri_for",
    "open_artifact",
    "parse_s3_uri",
    "read_extra_file",
    "read_manifest",
    "read_manifest_checked",
    "verify_artifact",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'serializer' has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
