"""How much a reader may fetch by range: caps on an extra file, a zip's tail (its central
directory) and a manifest, from the environment or given.

A ranged read is checked against these before anything is requested or allocated, so a
hostile manifest or central directory cannot make a reader hold more than the cap.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SerializerError

#: Prefix of the environment variables of :meth:`ReadLimits.from_env`.
ENV_PREFIX = "EXPORT_READ_"
#: The worker's default ``EXPORT_MAX_EXTRA_FILE_BYTES``: a reader takes what a default
#: worker writes (raise both together).
DEFAULT_MAX_EXTRA_BYTES = 256 * 1024**2
#: ~100 bytes a record: room for the central directory of ~600,000 records.
DEFAULT_MAX_TAIL_BYTES = 64 * 1024**2
#: The manifest model's own limit (``MAX_MANIFEST_BYTES``); a larger cap changes nothing.
DEFAULT_MAX_MANIFEST_BYTES = 32 * 1024**2

_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


class InvalidReadLimit(SerializerError, ValueError):
    """Raised when a read cap (given or from an ``EXPORT_READ_*`` variable) is not a positive size."""


@dataclass(frozen=True)
class ReadLimits:
    """The most bytes one ranged read may fetch, by what it reads.

    Memory of a read of one extra file is at most ``max_tail_bytes + max_extra_bytes``
    plus a local header's slack (a few KiB); of a manifest, ``max_manifest_bytes + 1``.
    """

    #: Largest extra file read by range (``EXPORT_READ_MAX_EXTRA_BYTES``).
    max_extra_bytes: int = DEFAULT_MAX_EXTRA_BYTES
    #: Largest zip tail (end record and central directory) read to find a record
    #: (``EXPORT_READ_MAX_TAIL_BYTES``).
    max_tail_bytes: int = DEFAULT_MAX_TAIL_BYTES
    #: Largest manifest read (``EXPORT_READ_MAX_MANIFEST_BYTES``).
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidReadLimit(f"ReadLimits.{f.name} must be a positive number of bytes, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadLimits:
        """The caps set by ``EXPORT_READ_MAX_EXTRA_BYTES``, ``EXPORT_READ_MAX_TAIL_BYTES`` and
        ``EXPORT_READ_MAX_MANIFEST_BYTES`` (bytes, or e.g. ``16MiB``), defaults for the rest.

        Raises:
            InvalidReadLimit: a variable is not a positive size, naming it.
        """
        env = os.environ if environ is None else environ
        given: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is not None and raw.strip():
                given[f.name] = parse_size(raw, name)
        return cls(**given)


def env_name(field: str) -> str:
    """The environment variable of a :class:`ReadLimits` field."""
    return ENV_PREFIX + field.upper()


def parse_size(raw: str, name: str) -> int:
    """A positive byte count from ``raw`` (``1048576``, ``16MiB``, ``2GB``).

    Raises:
        InvalidReadLimit: not a positive size; the message names ``name``.
    """
    match = _SIZE_RE.match(raw)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or int(match.group(1)) * unit < 1:
        raise InvalidReadLimit(
            f"{name}={raw!r} is not a positive size; give bytes or a number with KiB, MiB or GiB (e.g. 16MiB)"
        )
    return int(match.group(1)) * unit


def resolve_limits(limits: ReadLimits | None) -> ReadLimits:
    """``limits``, or the environment's when None (read at each call, never at import).

    Raises:
        InvalidReadLimit: an ``EXPORT_READ_*`` variable is invalid.
    """
    return ReadLimits.from_env() if limits is None else limits
