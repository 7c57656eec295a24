"""Bounds on a spec's JSON, checked before anything recurses through it."""

from __future__ import annotations

from typing import Any

from ..errors import SpecError

#: Largest JSON size of ``kwargs`` / ``metadata`` / inline extra files / given values, in bytes.
MAX_JSON_BYTES = 1024**2
#: Deepest nesting of JSON in a spec (kwargs, metadata, values): a deeper job is refused
#: before anything (Celery's pool, pydantic, the hash) recurses through it.
MAX_JSON_DEPTH = 32
#: Most elements of all synthesized example inputs of a spec together.
MAX_TOTAL_ELEMENTS = 64 * 1024**2


def json_depth_exceeds(data: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The path of the first value nested deeper than ``limit`` levels, or None (iterative:
    deep input cannot exhaust the stack)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "spec")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list | tuple):
            if depth >= limit:
                return path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in items)
    return None


def check_depth(data: Any) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH.

    Raises:
        SpecError: naming where.
    """
    where = json_depth_exceeds(data)
    if where is not None:
        raise SpecError(f"invalid spec: {where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
