"""Locks of single exports: one job writes a target's keys at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from . import lua
from .keys import target_key

#: Seconds between an item's tries to take the lock of an export another job is writing.
TARGET_LOCK_POLL = 2.0


def target_lock_ttl(settings: Settings) -> int:
    """Seconds an item holds the lock of the export it writes: past the hard time limit
    (a live export never loses it), not much more (a dead one does not block for long)."""
    return settings.time_limit + min(60, settings.time_limit // 4 + 1)


def target_locked(redis: Any, target: str) -> bool:
    """Whether some job holds the lock of the export at ``target``."""
    return bool(redis.exists(target_key(target)))


def target_lock(redis: Any, target: str, ttl: int, owner: str | None = None) -> Callable[[], None] | None:
    """Hold the lock of one export's keys; returns its release, or None if another holds it.

    ``owner`` (a task id) takes back a lock its own earlier attempt held when its process died.
    """
    key = target_key(target)
    token = owner or uuid.uuid4().hex
    if not redis.set(key, token, nx=True, ex=ttl):
        if owner is None or redis.get(key) != owner.encode():
            return None
        redis.expire(key, ttl)
    script = redis.register_script(lua.LOCK_OWNED)
    return lambda: script(keys=[key], args=[token, 0])
