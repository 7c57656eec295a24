"""The export plan (``worker.export.plan``): what an export does, from what was found."""

from __future__ import annotations

import itertools

import pytest

from worker.export.plan import Action, archive_matters, plan_export

SKIP, WRITE, STAGE = Action.SKIP, Action.WRITE, Action.STAGE

# (manifest found, archive found, replace, exclusive) -> action
TABLE = {
    # A complete export is skipped, or staged over when replaced.
    (True, False, False, False): SKIP,
    (True, False, False, True): SKIP,
    (True, False, True, False): STAGE,
    (True, False, True, True): STAGE,
    (True, True, False, False): SKIP,
    (True, True, False, True): SKIP,
    (True, True, True, False): STAGE,
    (True, True, True, True): STAGE,
    # Nothing there: written straight to its keys.
    (False, False, False, False): WRITE,
    (False, False, False, True): WRITE,
    (False, False, True, False): WRITE,
    (False, False, True, True): WRITE,
    # An archive without its manifest: another job may be writing it (conditional write,
    # the loser waits for the winner), unless the caller replaces or holds the lock.
    (False, True, False, False): WRITE,
    (False, True, False, True): STAGE,
    (False, True, True, False): STAGE,
    (False, True, True, True): STAGE,
}


def test_the_table_covers_every_combination() -> None:
    assert sorted(TABLE) == sorted(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize(("found", "expected"), sorted(TABLE.items()), ids=str)
def test_plan(found: tuple[bool, bool, bool, bool], expected: Action) -> None:
    manifest_found, archive_found, replace, exclusive = found
    action = plan_export(
        manifest_found=manifest_found,
        manifest_trusted=True,
        archive_found=archive_found,
        replace=replace,
        exclusive=exclusive,
    )
    assert action is expected


@pytest.mark.parametrize(("found", "expected"), sorted(TABLE.items()), ids=str)
def test_a_manifest_that_is_not_the_specs_export_is_replaced_never_skipped(
    found: tuple[bool, bool, bool, bool], expected: Action
) -> None:
    manifest_found, archive_found, replace, exclusive = found
    action = plan_export(
        manifest_found=manifest_found,
        manifest_trusted=False,
        archive_found=archive_found,
        replace=replace,
        exclusive=exclusive,
    )
    # Found and not trusted: staged over, whatever was asked; none found: as in the table.
    assert action is (STAGE if manifest_found else expected)


@pytest.mark.parametrize(
    ("manifest_found", "trusted", "replace", "exclusive"), list(itertools.product([False, True], repeat=4))
)
def test_the_archive_is_looked_for_only_where_it_changes_the_plan(
    manifest_found: bool, trusted: bool, replace: bool, exclusive: bool
) -> None:
    with_archive, without = (
        plan_export(
            manifest_found=manifest_found,
            manifest_trusted=trusted,
            archive_found=found,
            replace=replace,
            exclusive=exclusive,
        )
        for found in (True, False)
    )
    matters = archive_matters(manifest_found=manifest_found, replace=replace, exclusive=exclusive)
    assert matters == (with_archive != without)
