"""What an export does, decided from what is already in the store; no I/O here."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """What :func:`~worker.export.job.run_export` does with the export's keys."""

    #: The export is done (its manifest exists and is this spec's) and no replacement was
    #: asked for: return it.
    SKIP = "skip"
    #: Upload to the artifact key itself (conditionally, where the store supports it): a
    #: concurrent export of the same spec loses the race and waits for the winner.
    WRITE = "write"
    #: Upload to a staging key, verify there, then copy over the artifact and rewrite the
    #: manifest: what is there stays untouched until the new archive has passed.
    STAGE = "stage"


def archive_matters(*, manifest_found: bool, replace: bool, exclusive: bool) -> bool:
    """Whether :func:`plan_export` depends on an archive being found without its manifest,
    i.e. whether the store needs to be asked."""
    return not manifest_found and (replace or exclusive)


def plan_export(
    *, manifest_found: bool, manifest_trusted: bool, archive_found: bool, replace: bool, exclusive: bool
) -> Action:
    """The action for an export, from what was found at its keys.

    Args:
        manifest_found: a manifest exists at the export's manifest key.
        manifest_trusted: that manifest is this spec's export (its hash recomputes, it and
            its artifact lie at this spec's keys); one that is not is never returned as the
            export, but replaced the way a replacement is (ignored where none was found).
        archive_found: an archive exists at the artifact key (read only where
            :func:`archive_matters` says so; pass False otherwise).
        replace: the caller asked for the export to be made again.
        exclusive: the caller holds the export's lock: no other job writes these keys now,
            so an archive without its manifest was left by a job that died.
    """
    if manifest_found:
        return Action.STAGE if replace or not manifest_trusted else Action.SKIP
    if archive_found and archive_matters(manifest_found=manifest_found, replace=replace, exclusive=exclusive):
        # Left without its manifest by a failed replacement or a job that died: replaced the
        # same way, so that a failure now leaves it as it was.
        return Action.STAGE
    return Action.WRITE
