"""A binary file-like object that streams one S3 object through a bounded multipart upload."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any, Literal, NoReturn

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ObjectExists, UploadFailed
from ._body import FILE_READ_CHUNK, FileRangeBody, MemoryBody
from .client import S3Client
from .parts import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PART_SIZE, MAX_PARTS, auto_part_size, base_part_size, part_size_for
from .retry import RetryPolicy, error_code, http_status, is_transient
from .throttle import is_throttle_error, watch_throttling
from .tuner import DEFAULT_CAP, DEFAULT_START, FREE_SLOT_START, ConcurrencyTuner

log = logging.getLogger(__name__)

ChecksumAlgorithm = Literal["CRC32", "CRC32C", "SHA256", "CRC64NVME"]

#: Times Complete is retried when the store answers NoSuchUpload (some S3-compatible
#: stores briefly lose track of fresh upload ids).
NO_SUCH_UPLOAD_RETRIES = 3


class WriterState(Enum):
    """Where a :class:`MultipartWriter` is in its life."""

    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class UploadResult:
    """What a committed object looks like: its location, size, digests and version."""

    bucket: str
    key: str
    size: int
    sha256: str
    etag: str
    parts: int
    version_id: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class MultipartWriter:
    """Write one S3 object as a stream of bytes; it becomes visible only on a clean close.

    Bytes come either from :meth:`write` (a stream: parts are buffered in memory) or from
    one :meth:`send_file` (a file on disk: each part is read from its byte range while it
    is sent).  Parts upload on a thread pool while the producer goes on; how many are in
    flight is a :class:`~serializer.s3.tuner.ConcurrencyTuner`'s limit: ``max_in_flight``
    when set (fixed), else tuned to the measured throughput, and halved on throttling.

    **Memory bound.**  Streamed (:meth:`write`): at most ``part_size * (in_flight + 1)``
    bytes of part buffers, one part being filled plus those uploading; ``in_flight`` is
    ``max_in_flight`` when set, else at most :data:`~serializer.s3.parts.DEFAULT_MAX_IN_FLIGHT`
    (4), so a stream's memory is what it was with fixed settings.  The tuner's slots
    enforce it: :meth:`write` blocks while the limit is reached.  (For an object of unknown
    size past 1,000 parts the part size doubles; the bound then applies to the current part
    size, see :mod:`serializer.s3.parts`.)  From a file (:meth:`send_file`): no part
    buffers; the sequential read for the sha256 holds one 1 MiB chunk and each part being
    sent a chunk of botocore's (at most 1 MiB), so about ``1 MiB * (in_flight + 1)`` with
    ``in_flight`` up to ``max_connections`` (64).

    An object smaller than one part is written with a single PutObject; the multipart
    upload is only created once a second part is needed, and an empty object is an
    explicit empty put.  The sha256 of the whole object is computed as bytes pass.

    On any error (inside a ``with`` block, a part that failed after its retries, at
    Complete), in-flight parts are drained, the upload is aborted (with retries) and the
    error is raised: :class:`UploadFailed` naming the cause, or :class:`ObjectExists` when
    ``if_none_match`` is set and the key is taken.  Nothing is visible afterwards.

    Args:
        client: a boto3 S3 client; size its pool to the most parts in flight
            (``max_in_flight``, or ``max_connections`` when tuned; see
            :func:`serializer.s3.client.make_s3_client`).
        part_size: bytes per part (clamped to 5 MiB..5 GiB, grown for ``size_hint``); None
            picks it: 8 MiB for a stream, sized to the file for :meth:`send_file`
            (:func:`~serializer.s3.parts.auto_part_size`).
        max_in_flight: parts uploading at once, fixed; None tunes it (within 4 for a
            stream, within ``max_connections`` for a file).
        max_connections: cap of the tuned count for a file.
        tuner: a tuner to use instead (shared, or with a test's clock).
        size_hint: expected object size, when known, so that all parts are equal.
        checksum_algorithm: S3 flexible checksum computed per part and listed in Complete.
        if_none_match: publish only if the key does not exist yet (``If-None-Match: *``).
        extra_args: more PutObject / CreateMultipartUpload arguments (``ContentType``,
            ``Metadata``, ``ServerSideEncryption``...).
        progress: called with the number of bytes each time a part (or the put) lands.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int | None = None,
        max_in_flight: int | None = None,
        max_connections: int = DEFAULT_CAP,
        tuner: ConcurrencyTuner | None = None,
        size_hint: int | None = None,
        checksum_algorithm: ChecksumAlgorithm | None = None,
        if_none_match: bool = False,
        extra_args: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._client = client
        self.bucket = bucket
        self.key = key
        self._requested_part_size = part_size
        self._base = base_part_size(DEFAULT_PART_SIZE if part_size is None else part_size, size_hint)
        self._size_hint = size_hint
        self._max_in_flight = max_in_flight
        self._max_connections = max_connections
        self._given_tuner = tuner
        self._tuner = tuner or self._make_tuner(from_file=False)
        self._fd: int | None = None
        self._unwatch: Callable[[], None] | None = None
        self._checksum = checksum_algorithm
        self._if_none_match = if_none_match
        self._extra = dict(extra_args or {})
        self._retry = retry or RetryPolicy()
        self._progress = progress
        self._sha = hashlib.sha256()
        self._written = 0
        self._part_number = 1
        # A hinted small object gets a small buffer; it grows to a whole part if needed.
        self._buf = bytearray(self._base if size_hint is None else min(self._base, max(size_hint, 1)))
        self._fill = 0
        self._futures: list[Future[dict[str, Any]]] = []
        self._failure: BaseException | None = None
        self._upload_id: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.state = WriterState.OPEN
        self.result: UploadResult | None = None
        self._check_pool()

    # -- file-like surface -------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.state is not WriterState.OPEN

    def tell(self) -> int:
        """Bytes written so far."""
        return self._written

    def flush(self) -> None:
        """Does nothing: parts are sent when full, since S3 refuses parts under 5 MiB."""
        self._check_open()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; blocks while the most parts allowed are uploading.

        Raises:
            UploadFailed: a part failed after its retries (the upload is aborted first).
            ValueError: the writer is closed, or was given a file.
        """
        self._check_open()
        if self._fd is not None:
            raise ValueError("write() after send_file(): a writer sends one file or one stream")
        view = memoryview(data).cast("B")
        n = len(view)
        self._sha.update(view)
        pos = 0
        try:
            while pos < n:
                if self._fill == len(self._buf):
                    if len(self._buf) < self._part_size(self._part_number):
                        self._buf.extend(bytes(self._part_size(self._part_number) - len(self._buf)))
                    else:
                        self._ship_part()
                take = min(len(self._buf) - self._fill, n - pos)
                self._buf[self._fill : self._fill + take] = view[pos : pos + take]
                self._fill += take
                pos += take
        except BaseException as exc:  # noqa: BLE001 - abort on anything, then re-raise
            self._abort(exc)
            self._reraise(exc)
        self._written += n
        return n

    def send_file(self, f: IO[bytes] | int, on_chunk: Callable[[bytes], None] | None = None) -> None:
        """Send the whole of the open file ``f`` (a file object or descriptor) as the object.

        The file is read once, in order and 1 MiB at a time, for the sha256 and for
        ``on_chunk`` (a zip indexer, say); as soon as a part's range has been read, the part
        goes to the pool as a :class:`~serializer.s3._body.FileRangeBody` over that range,
        which the upload reads again while sending it: from the page cache, since the range
        was just read.  So no part is buffered and the parts in flight cost no memory; each
        part's pages are dropped from the cache once it has landed.  Unless ``part_size``
        was set, parts are sized to the file (:func:`~serializer.s3.parts.auto_part_size`).

        The writer keeps its own descriptor of the file until it is closed: the file must not
        change until then.  This is the writer's only write; :meth:`close` commits.

        Raises:
            UploadFailed: a part failed after its retries, or the file ended early (the
                upload is aborted first).
            ValueError: the writer is closed or was written to.
        """
        self._check_open()
        if self._written or self._fill or self._fd is not None:
            raise ValueError("send_file() must be a writer's only write")
        try:
            self._fd = os.dup(f if isinstance(f, int) else f.fileno())
            size = os.fstat(self._fd).st_size
            self._tuner = self._given_tuner or self._make_tuner(from_file=True)
            self._check_pool()
            if self._requested_part_size is None:
                self._base = auto_part_size(size, self._tuner.cap)
            else:
                self._base = base_part_size(self._requested_part_size, size)
            self._size_hint = size
            self._buf = bytearray()
            multipart = size > self._base
            offset = 0
            while offset < size:
                n = min(self._part_size(self._part_number), size - offset)
                self._read_through(offset, n, on_chunk)
                self._written += n
                if multipart:
                    self._ship(n, functools.partial(FileRangeBody, self._fd, offset, n), offset=offset)
                offset += n
        except BaseException as exc:  # noqa: BLE001 - abort on anything, then re-raise
            self._abort(exc)
            self._reraise(exc)

    def close(self) -> None:
        """Commit the object (PutObject, or the last part and Complete).  Idempotent.

        Raises:
            UploadFailed: the object could not be committed; it was aborted.
            ObjectExists: ``if_none_match`` is set and the key already exists.
        """
        if self.state is not WriterState.OPEN:
            return
        try:
            if self._failure is not None:
                raise self._failure
            if self._upload_id is None:
                self.result = self._put_single()
            else:
                if self._fd is None:
                    self._ship_part()
                self.result = self._complete()
        except BaseException as exc:  # noqa: BLE001 - abort on anything, then re-raise
            self._abort(exc)
            self._reraise(exc)
        finally:
            self._shutdown()
        self.state = WriterState.COMMITTED
        log.debug("committed s3://%s/%s (%d bytes)", self.bucket, self.key, self._written)

    def abort(self, reason: BaseException | None = None) -> None:
        """Drop everything written: drain in-flight parts and abort the upload.  Idempotent."""
        if self.state is WriterState.OPEN:
            self._abort(reason or RuntimeError("aborted by caller"))

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.abort(exc)
        else:
            self.close()

    def __del__(self) -> None:
        # A writer dropped without close() must not commit a truncated object.
        if getattr(self, "state", None) is WriterState.OPEN:
            with contextlib.suppress(Exception):  # best effort, maybe during interpreter teardown
                self._abort(RuntimeError("writer garbage-collected without close()"))

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._sha.hexdigest()

    @property
    def tuner(self) -> ConcurrencyTuner:
        """What decides how many parts are in flight (its ``peak``, ``limit``, ``throttles``)."""
        return self._tuner

    @property
    def part_size(self) -> int:
        """Size of the first part (all parts but the last when the size is known)."""
        return self._base

    # -- internals ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.state is not WriterState.OPEN:
            raise ValueError(f"I/O operation on {self.state.value} writer for s3://{self.bucket}/{self.key}")

    def _part_size(self, number: int) -> int:
        return part_size_for(number, self._base, self._size_hint)

    def _make_tuner(self, *, from_file: bool) -> ConcurrencyTuner:
        if self._max_in_flight is not None:
            return ConcurrencyTuner(fixed=self._max_in_flight)
        # Parts in memory keep the fixed default's bound; parts from a file cost none.
        cap = self._max_connections if from_file else min(DEFAULT_MAX_IN_FLIGHT, self._max_connections)
        # More requests than the client has connections would only queue for one.
        pool = self._pool_size()
        start = FREE_SLOT_START if from_file else DEFAULT_START
        return ConcurrencyTuner(start=start, cap=min(cap, pool) if pool else cap)

    def _pool_size(self) -> int | None:
        pool = getattr(getattr(getattr(self._client, "meta", None), "config", None), "max_pool_connections", None)
        return pool if isinstance(pool, int) and pool > 0 else None

    def _check_pool(self) -> None:
        pool = self._pool_size()
        if pool is not None and pool < self._tuner.cap:
            log.warning(
                "S3 client pool holds %d connections but up to %d parts upload at once; "
                "build the client with max_pool_connections>=%d",
                pool,
                self._tuner.cap,
                self._tuner.cap,
            )

    def _read_through(self, offset: int, n: int, on_chunk: Callable[[bytes], None] | None) -> None:
        """The sequential pass of :meth:`send_file` over one part's range: hash (and index)."""
        assert self._fd is not None
        pos, end = offset, offset + n
        while pos < end:
            chunk = os.pread(self._fd, min(FILE_READ_CHUNK, end - pos), pos)
            if not chunk:
                raise UploadFailed(f"s3://{self.bucket}/{self.key}: the file ended at {pos} of {end} bytes")
            self._sha.update(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            pos += len(chunk)

    def _ship_part(self) -> None:
        """Hand the filled buffer to the pool; blocks for a free slot."""
        buf, fill = self._buf, self._fill
        self._ship(fill, lambda: MemoryBody(memoryview(buf)[:fill]))
        self._buf = bytearray(self._part_size(self._part_number))
        self._fill = 0

    def _ship(self, size: int, body: Callable[[], io.RawIOBase], *, offset: int | None = None) -> None:
        """Hand the next part (``size`` bytes, read by ``body()``) to the pool; blocks for a
        free slot.  ``offset`` is the part's place in the file, for :meth:`send_file`."""
        if self._failure is not None:
            raise self._failure
        if self._upload_id is None:
            self._create()
        number = self._part_number
        if number > MAX_PARTS:
            raise UploadFailed(f"s3://{self.bucket}/{self.key}: more than {MAX_PARTS} parts; raise the part size")
        self._tuner.acquire()
        if self._failure is not None:
            self._tuner.release()
            raise self._failure
        assert self._executor is not None
        future = self._executor.submit(self._upload_part, number, size, body)
        future.add_done_callback(functools.partial(self._part_done, offset=offset))
        self._futures.append(future)
        self._part_number += 1

    def _part_done(self, future: Future[dict[str, Any]], *, offset: int | None = None) -> None:
        # The failure is recorded before the slot is freed, so a producer woken by the
        # release sees it and sends no further part.
        exc = future.exception()
        if exc is not None and self._failure is None:
            self._failure = exc
        self._tuner.release()
        if exc is not None:
            return
        size = future.result()["_size"]
        self._tuner.record(size)
        if offset is not None and self._fd is not None:
            with contextlib.suppress(AttributeError, OSError):
                # The spool is read once: keep it from crowding the page cache.
                os.posix_fadvise(self._fd, offset, size, os.POSIX_FADV_DONTNEED)
        if self._progress is not None:
            self._progress(size)

    def _create(self) -> None:
        args = dict(self._extra)
        if self._checksum:
            args["ChecksumAlgorithm"] = self._checksum
        resp = self._retry.call(lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=self.key, **args))
        # Registered at once: from here on every failure path aborts this id.
        upload_id = self._upload_id = resp["UploadId"]
        self._executor = ThreadPoolExecutor(self._tuner.cap, thread_name_prefix="s3-part")
        # Throttles botocore retries on its own never reach us as errors; the tuner needs them.
        self._unwatch = watch_throttling(
            self._client,
            "UploadPart",
            self._tuner.throttled,
            match=lambda request: request.get("query_string", {}).get("uploadId") == upload_id,
        )
        log.debug("created upload %s for s3://%s/%s", self._upload_id, self.bucket, self.key)

    def _require_upload_id(self) -> str:
        if self._upload_id is None:
            raise UploadFailed(f"s3://{self.bucket}/{self.key}: no multipart upload open")
        return self._upload_id

    def _upload_part(self, number: int, size: int, body: Callable[[], io.RawIOBase]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self._checksum:
            args["ChecksumAlgorithm"] = self._checksum

        def send() -> Any:
            try:
                return self._client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._require_upload_id(),
                    PartNumber=number,
                    # A file-like body botocore reads (and rewinds on a retry) without a copy.
                    Body=body(),  # type: ignore[arg-type]
                    ContentLength=size,
                    **args,
                )
            except ClientError as exc:
                if is_throttle_error(exc):
                    self._tuner.throttled()
                raise

        try:
            resp = self._retry.call(send, give_up=lambda: self.state is not WriterState.OPEN)
        except Exception as exc:
            raise UploadFailed(f"part {number} of s3://{self.bucket}/{self.key} failed: {_describe(exc)}") from exc
        part = {"PartNumber": number, "ETag": resp["ETag"], "_size": size}
        if self._checksum:
            part[f"Checksum{self._checksum}"] = resp[f"Checksum{self._checksum}"]
        return part

    def _put_single(self) -> UploadResult:
        args = dict(self._extra)
        if self._checksum:
            args["ChecksumAlgorithm"] = self._checksum
        if self._if_none_match:
            args["IfNoneMatch"] = "*"
        size = self._written if self._fd is not None else self._fill
        body = self._single_body()
        sends = [0]

        def put() -> Any:
            sends[0] += 1
            return self._client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=body(),  # type: ignore[arg-type]
                ContentLength=size,
                **args,
            )

        try:
            resp = self._retry.call(put, retry_if=_retry_unless_conflict)
        except ClientError as exc:
            # A put whose success reply was lost is retried (by botocore or by us) and then
            # meets its own object: the same bytes under the key mean it is ours.  A conflict
            # on the first send is another writer's object, whatever its bytes.
            expected = f'"{_md5(body())}"'
            if not (_is_conflict(exc) and _resent(exc, sends[0]) and self._object_etag() == expected):
                raise
            resp = {"ETag": expected}
        if self._progress is not None:
            self._progress(size)
        return self._result(resp, parts=0)

    def _single_body(self) -> Callable[[], io.RawIOBase]:
        """The whole object as a body: the file's bytes (:meth:`send_file`) or the buffer's."""
        if self._fd is not None:
            return functools.partial(FileRangeBody, self._fd, 0, self._written)
        view = memoryview(self._buf)[: self._fill]
        return lambda: MemoryBody(view)

    def _complete(self) -> UploadResult:
        wait(self._futures)
        if self._failure is not None:
            raise self._failure
        parts = [f.result() for f in self._futures]
        listed = [{k: v for k, v in p.items() if not k.startswith("_")} for p in parts]
        args: dict[str, Any] = {}
        if self._if_none_match:
            args["IfNoneMatch"] = "*"
        expected_etag = _multipart_etag([p["ETag"] for p in parts])

        sends = [0]

        def complete() -> Any:
            sends[0] += 1
            return self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._require_upload_id(),
                MultipartUpload={"Parts": listed},  # type: ignore[typeddict-item]
                **args,
            )

        for attempt in range(NO_SUCH_UPLOAD_RETRIES + 1):
            try:
                resp = self._retry.call(complete, retry_if=_retry_unless_conflict)
                break
            except Exception as exc:
                conflict = _is_conflict(exc)
                # A Complete whose reply was lost leaves the object committed: a resend meets
                # a conflict or NoSuchUpload, and a reply lost on every try leaves only the
                # error.  The object's ETag tells whether it is ours.  (On the first send a
                # conflict is another writer's object, even one with the same bytes: two
                # processes saving one module the same way produce identical archives.)
                may_be_ours = _resent(exc, sends[0]) if conflict else True
                if may_be_ours and self._object_etag() == expected_etag:
                    resp = {"ETag": expected_etag}
                    break
                if conflict or error_code(exc) != "NoSuchUpload" or attempt == NO_SUCH_UPLOAD_RETRIES:
                    raise
                self._retry.sleep(self._retry.delay(attempt))
        self._upload_id = None
        return self._result(resp, parts=len(parts))

    def _object_etag(self) -> str | None:
        """The ETag under the key, or None where there is no object.

        Raises:
            ClientError, BotoCoreError: the store could not say (after retries): whether the
                object is ours is unknown, and the caller's error stands as transient.
        """
        try:
            return str(self._retry.call(lambda: self._client.head_object(Bucket=self.bucket, Key=self.key))["ETag"])
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _result(self, resp: Mapping[str, Any], *, parts: int) -> UploadResult:
        return UploadResult(
            bucket=self.bucket,
            key=self.key,
            size=self._written,
            sha256=self._sha.hexdigest(),
            etag=str(resp.get("ETag", "")),
            parts=parts,
            version_id=resp.get("VersionId"),
        )

    def _abort(self, cause: BaseException) -> None:
        self.state = WriterState.ABORTED
        if self._futures:
            wait(self._futures)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                RetryPolicy(attempts=5, base_delay=self._retry.base_delay, sleep=self._retry.sleep).call(
                    lambda: self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id),
                    retry_if=lambda e: error_code(e) != "NoSuchUpload",
                )
            except Exception as exc:  # noqa: BLE001 - report, keep the original cause
                if error_code(exc) != "NoSuchUpload":
                    log.error(
                        "could not abort upload %s of s3://%s/%s: %s (a lifecycle rule will remove it)",
                        upload_id,
                        self.bucket,
                        self.key,
                        _describe(exc),
                    )
        self._shutdown()
        log.info("aborted s3://%s/%s after %d bytes: %s", self.bucket, self.key, self._written, _describe(cause))

    def _shutdown(self) -> None:
        self._buf = bytearray()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _reraise(self, exc: BaseException) -> NoReturn:
        """Raise ``exc`` as this package's error when it came from S3; anything else (the
        caller's own errors, interrupts, time limits) keeps its type."""
        if isinstance(exc, UploadFailed):
            raise exc
        if _is_conflict(exc):
            raise ObjectExists(
                f"s3://{self.bucket}/{self.key} already exists; another writer published it first "
                "(conditional publish, If-None-Match: *)"
            ) from exc
        if isinstance(exc, (ClientError, BotoCoreError)):
            raise UploadFailed(f"upload of s3://{self.bucket}/{self.key} aborted: {_describe(exc)}") from exc
        raise exc


def _is_conflict(exc: BaseException) -> bool:
    return error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") or http_status(exc) == 412


def _resent(exc: BaseException, sends: int) -> bool:
    """Whether the request that met ``exc`` may have been sent before (by us or by botocore's
    own retries), so that an earlier send may have succeeded with its reply lost."""
    if sends > 1:
        return True
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def _retry_unless_conflict(exc: BaseException) -> bool:
    return is_transient(exc) and error_code(exc) != "PreconditionFailed"


def _md5(body: io.RawIOBase) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := body.read(FILE_READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _multipart_etag(part_etags: list[str]) -> str:
    """S3's ETag of a multipart object: md5 of the parts' binary md5s, then ``-N``."""
    try:
        digest = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in part_etags), usedforsecurity=False)
    except ValueError:
        return ""
    return f'"{digest.hexdigest()}-{len(part_etags)}"'


def _describe(exc: BaseException) -> str:
    code = error_code(exc)
    text = str(exc) or type(exc).__name__
    return f"{code}: {text}" if code and code not in text else text
