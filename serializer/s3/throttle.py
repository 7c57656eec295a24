"""Telling a transfer's tuner that the store throttles: which replies say so, and a hook
that sees them even when botocore's own retries hide them from the caller."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from .client import S3Client
from .retry import error_code, http_status

#: Error codes by which S3 and S3-compatible stores ask a client to slow down.
THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
    }
)
#: HTTP statuses that mean the same (503 Slow Down, 429 Too Many Requests).
THROTTLE_STATUSES = frozenset({429, 503})

_ids = itertools.count()


def is_throttle(code: str, status: int) -> bool:
    """Whether a reply's error code or HTTP status asks the client to slow down."""
    return code in THROTTLE_CODES or status in THROTTLE_STATUSES


def is_throttle_error(exc: BaseException) -> bool:
    """Whether ``exc`` (a botocore ``ClientError``) is a throttling reply."""
    return is_throttle(error_code(exc), http_status(exc))


def watch_throttling(
    client: S3Client,
    operation: str,
    on_throttle: Callable[[], None],
    match: Callable[[Mapping[str, Any]], bool] = lambda _: True,
) -> Callable[[], None]:
    """Call ``on_throttle()`` on each throttling reply to ``operation`` (``"UploadPart"``,
    ``"GetObject"``), botocore's retried tries included; returns the function that stops it.

    ``match`` gets botocore's request dict (``query_string``, ``url_path``, ``context``) and
    picks the requests of one transfer on a client that several share.
    """
    event = f"needs-retry.s3.{operation}"
    unique_id = f"serializer-throttle-{next(_ids)}"

    def handler(response: Any = None, request_dict: Mapping[str, Any] | None = None, **_: Any) -> None:
        if not response:
            return
        http, parsed = response
        code = str((parsed or {}).get("Error", {}).get("Code", ""))
        if is_throttle(code, int(getattr(http, "status_code", 0) or 0)) and match(request_dict or {}):
            on_throttle()

    client.meta.events.register(event, handler, unique_id=unique_id)
    return lambda: client.meta.events.unregister(event, unique_id=unique_id)
