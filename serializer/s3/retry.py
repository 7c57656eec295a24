"""Retry policy for S3 calls: which errors are transient, and how long to wait between tries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

T = TypeVar("T")

#: Error codes S3 and S3-compatible stores use for conditions that pass on their own.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "OperationAborted",
    }
)

_TRANSIENT_TYPES = (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    """The HTTP status of a botocore ``ClientError`` (0 for anything else)."""
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: 5xx, throttling, timeouts and dropped connections."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return error_code(exc) in TRANSIENT_CODES or http_status(exc) >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (wait ``uniform(0, min(cap, base * 2**n))``).

    These retries sit on top of botocore's own; they cover what botocore gives up on, such as
    a part whose connection keeps dropping.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        # The exponent is capped so that a long retry run cannot overflow a float.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 1000)))

    def call(
        self,
        fn: Callable[[], T],
        *,
        retry_if: Callable[[BaseException], bool] = is_transient,
        give_up: Callable[[], bool] = lambda: False,
    ) -> T:
        """Call ``fn`` until it succeeds, a non-retryable error occurs, ``give_up()`` turns
        true, or the attempts run out; the last error is raised."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except Exception as exc:
                if attempt + 1 >= self.attempts or give_up() or not retry_if(exc):
                    raise
                self.sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover
