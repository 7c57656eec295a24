"""S3 scopes: the ``s3://bucket[/prefix]`` locations a deployment lets its jobs read or write.

Pure: no I/O.  Scopes and locations are compared on canonical path segments, never as
strings: ``s3://b/team`` covers ``s3://b/team`` and ``s3://b/team/x``, never ``s3://b/teamx``
nor ``s3://b/team-other/x``; bucket and segments compare exactly (S3 keys are case sensitive).
A location with a ``.``, ``..`` or empty segment (``a//b``) is refused rather than normalised:
the store takes such a key literally, so what it names is not what it seems to name.

The single entry ``*`` (:data:`UNSCOPED`) allows every location: for single-team
deployments and tests only, never the default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from serializer.errors import InvalidURI
from serializer.s3.uri import parse_s3_uri

from .errors import ScopeError

#: The one entry that allows every location (single-team deployments and tests only).
UNSCOPED = "*"
#: The settings that name the scopes, as a refusal names them.
READ_SETTING = "EXPORT_READ_SCOPES"
WRITE_SETTING = "EXPORT_WRITE_SCOPES"


class Location(NamedTuple):
    """A bucket and the path segments of a key or prefix (none: the whole bucket)."""

    bucket: str
    segments: tuple[str, ...]

    def __str__(self) -> str:
        return "/".join((f"s3://{self.bucket}", *self.segments))

    def covers(self, other: Location) -> bool:
        """Whether ``other`` is this location or lies below it, segment by segment."""
        return other.bucket == self.bucket and other.segments[: len(self.segments)] == self.segments


def parse_location(uri: str) -> Location:
    """``uri`` (``s3://bucket[/key]``) as a bucket and its key's segments; one trailing ``/``
    (a prefix written as a folder) is dropped.

    Raises:
        ScopeError: not an ``s3://`` URI, or a ``.``, ``..`` or empty segment.
    """
    try:
        parsed = parse_s3_uri(uri, require_key=False)
    except InvalidURI as exc:
        raise ScopeError(str(exc)) from exc
    key = parsed.key[:-1] if parsed.key.endswith("/") else parsed.key
    segments = tuple(key.split("/")) if key else ()
    for segment in segments:
        if segment in ("", ".", ".."):
            shown = "an empty segment" if not segment else f"a {segment!r} segment"
            raise ScopeError(f"{uri} has {shown}; the store would take it literally (write the key without it)")
    return Location(parsed.bucket, segments)


def parse_scopes(entries: Iterable[str]) -> tuple[str, ...]:
    """Scope entries in canonical form (``s3://bucket`` or ``s3://bucket/a/b``), in order,
    without duplicates; ``("*",)`` stays as it is.

    Raises:
        ValueError: an entry that is not an ``s3://`` location, has ``.``/``..``/empty segments,
            or a ``*`` beside other entries.
    """
    items = [e.strip() for e in entries if e.strip()]
    if UNSCOPED in items:
        if len(items) != 1:
            raise ValueError(f"{UNSCOPED!r} (every location) must be the only entry, got {items}")
        return (UNSCOPED,)
    canonical: list[str] = []
    for item in items:
        try:
            text = str(parse_location(item))
        except ScopeError as exc:
            raise ValueError(f"scope {item!r}: {exc}") from None
        if text not in canonical:
            canonical.append(text)
    return tuple(canonical)


def is_unscoped(scopes: Iterable[str]) -> bool:
    """Whether ``scopes`` is the explicit ``*``."""
    return tuple(scopes) == (UNSCOPED,)


def allows(scopes: Iterable[str], uri: str) -> bool:
    """Whether one of ``scopes`` covers ``uri``.

    Raises:
        ScopeError: ``uri`` is not a canonical location (see :func:`parse_location`).
    """
    location = parse_location(uri)
    entries = tuple(scopes)
    if is_unscoped(entries):
        return True
    return any(parse_location(entry).covers(location) for entry in entries)


def check_location(scopes: Iterable[str], uri: str, *, field: str, setting: str) -> None:
    """Refuse ``uri`` unless one of ``scopes`` covers it.  The message names the field and
    the rule, and says nothing else about the location.

    Raises:
        ScopeError: ``field: uri is outside SETTING``, or a location with bad segments.
    """
    try:
        allowed = allows(scopes, uri)
    except ScopeError as exc:
        raise ScopeError(f"{field}: {exc}") from None
    if not allowed:
        raise ScopeError(f"{field}: {uri} is outside {setting}")


def check_read(scopes: Iterable[str], uri: str, field: str) -> None:
    """:func:`check_location` against the read scopes."""
    check_location(scopes, uri, field=field, setting=READ_SETTING)


def check_write(scopes: Iterable[str], uri: str, field: str) -> None:
    """:func:`check_location` against the write scopes."""
    check_location(scopes, uri, field=field, setting=WRITE_SETTING)
