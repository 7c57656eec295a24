"""The hostile-spec corpus itself: large, and its ids distinct."""

from __future__ import annotations

from tests.hostile_corpus import CORPUS


def test_the_corpus_is_large_and_its_ids_distinct() -> None:
    ids = [p.id for p in CORPUS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40
