"""The spec's extra files, resolved to bytes: inline text, base64, or objects in S3."""

from __future__ import annotations

from botocore.exceptions import ClientError

from serializer.archive.extras import BUILD_RECORD_DIR, decode_base64
from serializer.errors import InvalidExtraFile
from serializer.pt2.export import check_text_extras
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri

from ..errors import SpecError
from ..spec import ExportSpec, ExtraBase64, ExtraText, ExtraURI

#: Codes of an object that is missing or forbidden: both read as "cannot be read".
UNREADABLE_CODES = ("404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied")
#: Largest extra file when no limit is given (EXPORT_MAX_EXTRA_FILE_BYTES).
MAX_EXTRA_FILE_BYTES = 256 * 1024**2


def resolve_extra_files(spec: ExportSpec, client: S3Client, limit: int = MAX_EXTRA_FILE_BYTES) -> dict[str, bytes]:
    """The spec's extra files as bytes (text, base64, or fetched from S3).

    Raises:
        SpecError: a reserved name, an object that is missing, a file over ``limit`` bytes.
    """
    out: dict[str, bytes] = {}
    for name, source in spec.extra_files.items():
        if name.split("/", 1)[0] == BUILD_RECORD_DIR:
            raise SpecError(f"extra_files.{name}: the folder {BUILD_RECORD_DIR!r} is reserved for the build record")
        if isinstance(source, str):
            out[name] = source.encode("utf-8")
        elif isinstance(source, ExtraText):
            out[name] = source.text.encode("utf-8")
        elif isinstance(source, ExtraBase64):
            out[name] = decode_base64(name, source.base64)
        elif isinstance(source, ExtraURI):
            out[name] = fetch_bounded(client, f"extra_files.{name}", source.uri, limit)
        if len(out[name]) > limit:
            raise SpecError(
                f"extra_files.{name}: {len(out[name])} bytes, over EXPORT_MAX_EXTRA_FILE_BYTES ({limit} bytes)"
            )
    return out


def check_extras_for_format(spec: ExportSpec, extras: dict[str, bytes]) -> None:
    """Refuse extra files the spec's format cannot hold (a ``.pt2`` holds text only).

    Raises:
        SpecError: the file that cannot be stored, and why.
    """
    if spec.format == "pt2":
        try:
            check_text_extras(extras)
        except InvalidExtraFile as exc:
            raise SpecError(f"extra_files: {exc}") from exc


def fetch_bounded(client: S3Client, label: str, uri: str, limit: int) -> bytes:
    """The object at ``uri``, at most ``limit`` bytes (its size is checked first); ``label``
    names the spec field in errors.

    Raises:
        SpecError: the object is over ``limit``, or cannot be read (missing or forbidden:
            one message).
    """
    target = parse_s3_uri(uri)
    try:
        head = client.head_object(Bucket=target.bucket, Key=target.key)
        if head["ContentLength"] > limit:
            raise SpecError(
                f"{label}: {uri} holds {head['ContentLength']} bytes, over EXPORT_MAX_EXTRA_FILE_BYTES ({limit} bytes)"
            )
        return bytes(client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())
    except ClientError as exc:
        if error_code(exc) in UNREADABLE_CODES:
            # One message for missing and forbidden: which of the two it is is not the submitter's to learn.
            raise SpecError(f"{label}: {uri} cannot be read") from None
        raise
