"""Pure part-size planning for S3 multipart uploads.

S3 allows parts of 5 MiB to 5 GiB (the last may be smaller) and at most 10,000 parts.
When the object's size is known (or hinted), every part but the last has the same size,
chosen so the object fits in 10,000 parts.  When the size is unknown, parts stay equal
for the first :data:`PARTS_PER_TIER` parts and then double each tier, so any object up to
S3's 5 TiB ceiling still fits in 10,000 parts while small objects keep small parts.

Unless a part size is set, an object of known size (a spool file) gets parts sized to it
(:func:`auto_part_size`): enough parts that every connection the tuner may open has
several to send, no fewer than 8 MiB and no more than 64 MiB each (grown past that only
to stay within 10,000 parts).
"""

from __future__ import annotations

import math
import re

#: Default part size: large enough that 1 GiB is 128 requests, small enough that the
#: memory bound stays in the tens of MiB (see docs/benchmarks.md).
DEFAULT_PART_SIZE = 8 * 1024**2
#: Default parts in flight for parts held in memory (a stream: fifo, pt2 ``stream``): it
#: saturates a local S3 endpoint on two cores (docs/benchmarks.md) and keeps such an upload's
#: memory at ``part_size * (4 + 1)``.  Parts read from a file are tuned instead.
DEFAULT_MAX_IN_FLIGHT = 4
#: Parts per connection an upload of known size is cut into, so the tuner has parts to
#: measure with and every connection at its cap stays busy to near the end.
PARTS_PER_CONNECTION = 4
#: Largest automatic part size: a part lost to a reset is resent whole, and at ~90 MB/s per
#: connection 64 MiB is under a second of it.
MAX_AUTO_PART_SIZE = 64 * 1024**2
#: S3's smallest part (every part but the last must be at least this big).
MIN_PART_SIZE = 5 * 1024**2
#: S3's largest part.
MAX_PART_SIZE = 5 * 1024**3
#: S3's limit on the number of parts in one upload.
MAX_PARTS = 10_000
#: Parts per size tier for objects of unknown size: ten doubling tiers of 1,000 parts
#: starting at 5 MiB reach ~5 TiB, S3's largest object, inside 10,000 parts.
PARTS_PER_TIER = 1_000
#: Part sizes are rounded up to whole MiB so they read well in logs and metrics.
_ROUND = 1024**2

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: int | str) -> int:
    """Parse a byte count given as an int or a string such as ``"8MiB"``, ``"16M"``, ``"5242880"``.

    Units are binary (``8M`` = ``8MiB`` = 8 * 1024**2).

    Raises:
        ValueError: the string is not a size.
    """
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (use bytes, or a number with KiB/MiB/GiB)")
    unit = (match.group(2) or "").upper()[:1]
    return int(match.group(1)) * _UNITS[unit]


def base_part_size(requested: int, size_hint: int | None = None) -> int:
    """The part size to start with: ``requested`` clamped to S3's limits, grown so that an
    object of ``size_hint`` bytes fits in :data:`MAX_PARTS` equal parts."""
    size = min(max(requested, MIN_PART_SIZE), MAX_PART_SIZE)
    if size_hint is not None and size_hint > size * MAX_PARTS:
        size = math.ceil(size_hint / MAX_PARTS / _ROUND) * _ROUND
    return min(size, MAX_PART_SIZE)


def auto_part_size(size: int | None, connections: int) -> int:
    """Part size for an object of ``size`` bytes (None: unknown) sent on up to ``connections``.

    Unknown sizes get :data:`DEFAULT_PART_SIZE` (and double past 1,000 parts, see
    :func:`part_size_for`).  Known sizes are cut into about ``connections *
    PARTS_PER_CONNECTION`` parts of :data:`DEFAULT_PART_SIZE` to :data:`MAX_AUTO_PART_SIZE`,
    whole MiB, grown where needed to fit :data:`MAX_PARTS`.
    """
    if size is None:
        return DEFAULT_PART_SIZE
    target = math.ceil(size / max(1, connections * PARTS_PER_CONNECTION) / _ROUND) * _ROUND
    return base_part_size(min(max(target, DEFAULT_PART_SIZE), MAX_AUTO_PART_SIZE), size)


def part_size_for(part_number: int, base: int, size_hint: int | None = None) -> int:
    """Size of part ``part_number`` (1-based) for an upload that started with ``base``.

    With a size hint that the object stays within, every part has size ``base``; past the
    hint (or with none), parts double every :data:`PARTS_PER_TIER` parts.
    """
    if part_number < 1:
        raise ValueError("part numbers start at 1")
    if size_hint is not None and (part_number - 1) * base < size_hint:
        return base
    tier = (part_number - 1) // PARTS_PER_TIER
    return min(base << tier, MAX_PART_SIZE)


def max_object_size(base: int) -> int:
    """Largest object an upload starting at ``base`` can hold within :data:`MAX_PARTS` parts."""
    return sum(part_size_for(n, base) for n in range(1, MAX_PARTS + 1, PARTS_PER_TIER)) * PARTS_PER_TIER
