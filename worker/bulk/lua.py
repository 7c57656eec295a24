"""The Redis scripts of a bulk run (``scripts/*.lua``), read once when this module loads.

Each runs atomically in Redis; its keys and arguments are described at its top.
"""

from __future__ import annotations

from importlib.resources import files


def _read(name: str) -> str:
    return files("worker.bulk").joinpath("scripts", f"{name}.lua").read_text(encoding="utf-8")


#: Claim the next to-do item while the window has room.
CLAIM = _read("claim")
#: Whether the caller is the one to finalize (planning done, nothing left), at most once.
FINISH = _read("finish")
#: Release or renew a lock only while its owner still holds it.
LOCK_OWNED = _read("lock_owned")
#: Count a finished item once and free its slot.
COMPLETE = _read("complete")
