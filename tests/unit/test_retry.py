"""RetryPolicy and the error classification it relies on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from serializer.s3.retry import TRANSIENT_CODES, RetryPolicy, error_code, http_status, is_transient

ENDPOINT = "http://127.0.0.1:9"


def client_error(code: str, status: int = 400, operation: str = "PutObject") -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


class Flaky:
    """A callable that raises the given errors in turn, then returns ``value``."""

    def __init__(self, errors: Sequence[BaseException], value: Any = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def recording_policy(**kwargs: Any) -> tuple[RetryPolicy, list[float]]:
    delays: list[float] = []
    return RetryPolicy(sleep=delays.append, **kwargs), delays


# -- classification -----------------------------------------------------------------------


def test_error_code_and_status_of_client_error() -> None:
    exc = client_error("SlowDown", 503)
    assert error_code(exc) == "SlowDown"
    assert http_status(exc) == 503


def test_error_code_and_status_of_other_errors() -> None:
    exc = ConnectionClosedError(endpoint_url=ENDPOINT)
    assert error_code(exc) == ""
    assert http_status(exc) == 0
    assert error_code(ValueError("x")) == ""


def test_error_code_of_bare_client_error_response() -> None:
    exc = ClientError({}, "GetObject")
    assert error_code(exc) == ""
    assert http_status(exc) == 0


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES))
def test_transient_codes(code: str) -> None:
    assert is_transient(client_error(code, 400))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient_whatever_the_code(status: int) -> None:
    assert is_transient(client_error("SomethingNew", status))


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionClosedError(endpoint_url=ENDPOINT),
        EndpointConnectionError(endpoint_url=ENDPOINT),
        ReadTimeoutError(endpoint_url=ENDPOINT),
        ConnectionResetError("reset"),
        TimeoutError("timed out"),
    ],
    ids=type,
)
def test_network_errors_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error("AccessDenied", 403),
        client_error("NoSuchKey", 404),
        client_error("NoSuchBucket", 404),
        client_error("PreconditionFailed", 412),
        client_error("InvalidPart", 400),
        ValueError("bad"),
        KeyError("k"),
    ],
    ids=lambda e: error_code(e) or type(e).__name__,
)
def test_permanent_errors_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


# -- RetryPolicy.call ---------------------------------------------------------------------


def test_success_first_time_does_not_sleep() -> None:
    policy, delays = recording_policy()
    fn = Flaky([])
    assert policy.call(fn) == "ok"
    assert fn.calls == 1
    assert delays == []


@pytest.mark.parametrize(
    "error",
    [
        lambda: client_error("SlowDown", 503),
        lambda: client_error("InternalError", 500),
        lambda: client_error("Whatever", 500),
        lambda: ConnectionClosedError(endpoint_url=ENDPOINT),
    ],
    ids=["SlowDown", "InternalError", "500", "ConnectionClosedError"],
)
def test_transient_errors_are_retried(error: Callable[[], BaseException]) -> None:
    policy, delays = recording_policy(attempts=5, base_delay=0.5, max_delay=10.0)
    fn = Flaky([error(), error()], value=42)
    assert policy.call(fn) == 42
    assert fn.calls == 3
    assert len(delays) == 2
    assert 0 <= delays[0] <= 0.5
    assert 0 <= delays[1] <= 1.0


@pytest.mark.parametrize(
    "error",
    [client_error("AccessDenied", 403), client_error("NoSuchKey", 404), ValueError("bug")],
    ids=["AccessDenied", "NoSuchKey", "ValueError"],
)
def test_permanent_errors_are_raised_at_once(error: BaseException) -> None:
    policy, delays = recording_policy()
    fn = Flaky([error])
    with pytest.raises(type(error)) as info:
        policy.call(fn)
    assert info.value is error
    assert fn.calls == 1
    assert delays == []


def test_gives_up_after_attempts_and_raises_the_last_error() -> None:
    policy, delays = recording_policy(attempts=4)
    errors = [client_error("SlowDown", 503) for _ in range(10)]
    fn = Flaky(errors[:])
    with pytest.raises(ClientError) as info:
        policy.call(fn)
    assert fn.calls == 4
    assert len(delays) == 3
    assert info.value is errors[3]


def test_single_attempt_never_retries() -> None:
    policy, delays = recording_policy(attempts=1)
    fn = Flaky([client_error("SlowDown", 503)])
    with pytest.raises(ClientError):
        policy.call(fn)
    assert fn.calls == 1
    assert delays == []


def test_give_up_stops_retrying() -> None:
    policy, delays = recording_policy(attempts=10)
    fn = Flaky([client_error("SlowDown", 503) for _ in range(10)])
    with pytest.raises(ClientError):
        policy.call(fn, give_up=lambda: True)
    assert fn.calls == 1
    assert delays == []


def test_give_up_turning_true_midway() -> None:
    policy, delays = recording_policy(attempts=10)
    fn = Flaky([client_error("SlowDown", 503) for _ in range(10)])
    with pytest.raises(ClientError):
        policy.call(fn, give_up=lambda: fn.calls >= 3)
    assert fn.calls == 3
    assert len(delays) == 2


def test_retry_if_overrides_classification() -> None:
    policy, delays = recording_policy()
    fn = Flaky([client_error("NoSuchUpload", 404)])
    assert policy.call(fn, retry_if=lambda e: error_code(e) == "NoSuchUpload") == "ok"
    assert fn.calls == 2
    assert len(delays) == 1

    fn = Flaky([client_error("SlowDown", 503)])
    with pytest.raises(ClientError):
        policy.call(fn, retry_if=lambda e: False)
    assert fn.calls == 1


def test_base_exceptions_are_not_retried() -> None:
    policy, delays = recording_policy()
    fn = Flaky([KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        policy.call(fn, retry_if=lambda e: True)
    assert fn.calls == 1
    assert delays == []


def test_delays_passed_to_sleep_follow_backoff() -> None:
    policy, delays = recording_policy(attempts=8, base_delay=0.1, max_delay=1.0)
    fn = Flaky([ConnectionClosedError(endpoint_url=ENDPOINT) for _ in range(7)])
    assert policy.call(fn) == "ok"
    assert len(delays) == 7
    for n, d in enumerate(delays):
        assert 0 <= d <= min(1.0, 0.1 * 2**n)


# -- RetryPolicy.delay --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cap"),
    [(0.2, 10.0), (0.05, 0.3), (1.0, 1.0), (0.0, 5.0)],
)
def test_delay_within_full_jitter_bounds(base: float, cap: float) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap)
    for attempt in range(12):
        bound = min(cap, base * 2**attempt)
        samples = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= s <= bound for s in samples)
        if bound > 0:
            # Full jitter: samples spread over the whole range, not pinned to the bound.
            assert min(samples) < bound / 4
            assert max(samples) > bound * 3 / 4


def test_delay_for_very_late_attempts_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.2, max_delay=3.0)
    for attempt in (64, 1023, 1024, 5000):
        assert 0 <= policy.delay(attempt) <= 3.0


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert policy.attempts >= 2
    assert 0 < policy.base_delay <= policy.max_delay


def test_policy_is_frozen_and_compares_without_sleep() -> None:
    a = RetryPolicy(attempts=3, sleep=lambda s: None)
    b = RetryPolicy(attempts=3)
    assert a == b
    with pytest.raises(AttributeError):
        a.attempts = 4  # type: ignore[misc]
