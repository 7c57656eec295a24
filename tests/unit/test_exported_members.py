"""The public surface of ``serializer``: what it exports, and that importing it is cheap."""

from __future__ import annotations

import inspect
import subprocess
import sys

import serializer

EXPORTED = [
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


def test_all_is_pinned() -> None:
    assert serializer.__all__ == EXPORTED


def test_every_exported_function_and_class_is_the_project_s_own() -> None:
    for name in serializer.__all__:
        value = getattr(serializer, name)
        if inspect.isfunction(value) or (inspect.isclass(value) and value.__module__ != "typing"):
            assert value.__module__.startswith("serializer."), (name, value.__module__)
            assert value.__name__ == name


def test_unknown_names_raise_attribute_error() -> None:
    try:
        serializer.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("serializer.no_such_name resolved")


def test_importing_the_package_imports_neither_torch_nor_boto3() -> None:
    code = (
        "import sys, serializer; "
        "print(','.join(m for m in ('torch', 'boto3', 'botocore', 'celery') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
