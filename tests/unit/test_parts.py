"""Part-size planning: size parsing, clamping to S3's limits, growth for hints and tiers."""

from __future__ import annotations

import math

import pytest

from serializer.s3.parts import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    PARTS_PER_TIER,
    base_part_size,
    max_object_size,
    parse_size,
    part_size_for,
)

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


def test_constants_are_s3_limits() -> None:
    limits = (MIN_PART_SIZE, MAX_PART_SIZE, MAX_PARTS)
    assert limits == (5 * MiB, 5 * GiB, 10_000)
    assert (PARTS_PER_TIER, MAX_PARTS // PARTS_PER_TIER) == (1_000, 10)


# -- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("5242880", 5 * MiB),
        ("  12  ", 12),
        ("8B", 8),
        ("8MiB", 8 * MiB),
        ("8mib", 8 * MiB),
        ("8 MiB", 8 * MiB),
        ("16M", 16 * MiB),
        ("16MB", 16 * MiB),
        ("4K", 4 * 1024),
        ("4KiB", 4 * 1024),
        ("4kb", 4 * 1024),
        ("2G", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("1T", TiB),
        ("1TiB", TiB),
    ],
)
def test_parse_size_strings(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", [0, 1, 5 * MiB, 7 * GiB])
def test_parse_size_ints_pass_through(value: int) -> None:
    assert parse_size(value) == value


def test_parse_size_rejects_negative_int() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "MiB", "-5", "-5MiB", "1.5GiB", "8XB", "8 MiB MiB", "8iB", "eight", "0x10", "8MiBs", "1e6"],
)
def test_parse_size_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


# -- base_part_size -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (0, MIN_PART_SIZE),
        (1, MIN_PART_SIZE),
        (MIN_PART_SIZE - 1, MIN_PART_SIZE),
        (MIN_PART_SIZE, MIN_PART_SIZE),
        (MIN_PART_SIZE + 1, MIN_PART_SIZE + 1),
        (8 * MiB, 8 * MiB),
        (MAX_PART_SIZE, MAX_PART_SIZE),
        (MAX_PART_SIZE + 1, MAX_PART_SIZE),
        (100 * GiB, MAX_PART_SIZE),
    ],
)
def test_base_part_size_clamps_to_s3_limits(requested: int, expected: int) -> None:
    assert base_part_size(requested) == expected


@pytest.mark.parametrize("hint", [0, 1, 8 * MiB, 8 * MiB * MAX_PARTS])
def test_base_part_size_keeps_requested_size_when_hint_fits(hint: int) -> None:
    assert base_part_size(8 * MiB, hint) == 8 * MiB


@pytest.mark.parametrize(
    "hint",
    [
        8 * MiB * MAX_PARTS + 1,
        100 * GiB,
        123_456_789_012,
        TiB,
        5 * TiB,
        MAX_PART_SIZE * MAX_PARTS - 1,
        MAX_PART_SIZE * MAX_PARTS,
    ],
)
def test_base_part_size_grows_so_hint_fits_in_max_parts(hint: int) -> None:
    size = base_part_size(8 * MiB, hint)
    assert size > 8 * MiB
    assert size <= MAX_PART_SIZE
    assert size % MiB == 0
    # The hinted object fits in 10,000 parts...
    assert math.ceil(hint / size) <= MAX_PARTS
    # ...and the size is the smallest whole-MiB size that does.
    assert math.ceil(hint / (size - MiB)) > MAX_PARTS


def test_base_part_size_for_hint_beyond_s3_limits_is_capped() -> None:
    assert base_part_size(MIN_PART_SIZE, MAX_PART_SIZE * MAX_PARTS * 2) == MAX_PART_SIZE


# -- part_size_for ------------------------------------------------------------------------


@pytest.mark.parametrize("number", [0, -1])
def test_part_numbers_start_at_one(number: int) -> None:
    with pytest.raises(ValueError, match="start at 1"):
        part_size_for(number, MIN_PART_SIZE)


def test_part_size_without_hint_doubles_every_tier() -> None:
    base = MIN_PART_SIZE
    for number in (1, 2, 999, 1000):
        assert part_size_for(number, base) == base
    assert part_size_for(1001, base) == 2 * base
    assert part_size_for(2000, base) == 2 * base
    assert part_size_for(2001, base) == 4 * base
    assert part_size_for(9001, base) == 512 * base
    assert part_size_for(MAX_PARTS, base) == 512 * base


def test_part_size_without_hint_never_exceeds_max_part_size() -> None:
    base = 100 * MiB
    sizes = [part_size_for(n, base) for n in range(1, MAX_PARTS + 1)]
    assert max(sizes) == MAX_PART_SIZE
    assert all(MIN_PART_SIZE <= s <= MAX_PART_SIZE for s in sizes)
    assert sizes == sorted(sizes)


def test_part_size_within_hint_is_equal() -> None:
    base = MIN_PART_SIZE
    hint = 5_000 * base
    # Without the hint part 2000 would be in the second tier; within the hint it stays base.
    assert part_size_for(2000, base) == 2 * base
    assert {part_size_for(n, base, hint) for n in range(1, 5_001)} == {base}


def test_part_size_past_hint_falls_back_to_tiers() -> None:
    base = MIN_PART_SIZE
    hint = 5_000 * base
    assert part_size_for(5_001, base, hint) == part_size_for(5_001, base) == 32 * base


@pytest.mark.parametrize("hint", [1, 17 * MiB, 100 * GiB, TiB, 5 * TiB - 1])
def test_hinted_object_fits_in_equal_parts(hint: int) -> None:
    base = base_part_size(MIN_PART_SIZE, hint)
    parts = math.ceil(hint / base)
    assert parts <= MAX_PARTS
    assert {part_size_for(n, base, hint) for n in range(1, parts + 1)} == {base}


# -- max_object_size ----------------------------------------------------------------------


def test_max_object_size_of_min_part_reaches_terabytes() -> None:
    size = max_object_size(MIN_PART_SIZE)
    assert size == MIN_PART_SIZE * PARTS_PER_TIER * (2**10 - 1)
    assert size >= 4.8 * TiB
    # Summing the 10,000 individual parts gives the same figure.
    assert sum(part_size_for(n, MIN_PART_SIZE) for n in range(1, MAX_PARTS + 1)) == size


def test_max_object_size_of_max_part() -> None:
    assert max_object_size(MAX_PART_SIZE) == MAX_PART_SIZE * MAX_PARTS


def test_max_object_size_grows_with_base() -> None:
    assert max_object_size(8 * MiB) > max_object_size(MIN_PART_SIZE)
