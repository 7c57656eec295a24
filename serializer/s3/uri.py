"""``s3://bucket/key`` URIs."""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from ..errors import InvalidURI

# Bucket names per S3's rules (3-63 chars, lowercase, digits, dots, hyphens), loosened to
# allow the underscores and capitals some S3-compatible stores accept.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


class S3URI(NamedTuple):
    """A parsed ``s3://bucket/key`` URI."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3URI:
        """This URI taken as a prefix, with ``parts`` appended as path segments."""
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3URI(self.bucket, key)


def parse_s3_uri(uri: str, *, require_key: bool = True) -> S3URI:
    """Parse ``s3://bucket/key``.

    Raises:
        InvalidURI: not an ``s3://`` URI, a bad bucket name, control characters, or
            no key where ``require_key`` is set.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidURI(f"not an s3:// URI: {uri!r}")
    if any(unicodedata.category(c) == "Cc" for c in uri):  # C0, DEL and C1 controls
        raise InvalidURI(f"control characters in URI {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidURI(f"bad bucket name {bucket!r} in {uri!r}")
    if require_key and not key:
        raise InvalidURI(f"no object key in {uri!r} (expected s3://bucket/key)")
    if len(key.encode()) > 1024:
        raise InvalidURI(f"object key longer than 1024 bytes in {uri!r}")
    return S3URI(bucket, key)
