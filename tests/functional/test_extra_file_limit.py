"""The extra-file size limit (EXPORT_MAX_EXTRA_FILE_BYTES) in a whole export against in-process
moto: an extra file over it is refused naming the setting, one at it is exported.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import object_keys, open_uploads
from tests.hostile_archives import LIMIT, _put, _run_with_limit
from worker.errors import SpecError


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda s3, bucket: "x" * (2 * LIMIT), id="inline-text"),
        pytest.param(lambda s3, bucket: "\u00e9" * (LIMIT // 2 + 1), id="inline-text-counted-in-utf8-bytes"),
        pytest.param(lambda s3, bucket: {"text": "y" * (2 * LIMIT)}, id="text-object"),
        pytest.param(lambda s3, bucket: {"base64": base64.b64encode(b"\0" * (2 * LIMIT)).decode()}, id="base64"),
        pytest.param(lambda s3, bucket: {"uri": _put(s3, bucket, "assets/big.bin", b"z" * (2 * LIMIT))}, id="s3-uri"),
    ],
)
def test_an_extra_file_over_the_limit_is_refused_naming_the_setting(
    s3: Any, bucket: str, source: Callable[[Any, str], Any]
) -> None:
    extra_files = {"small.txt": "ok", "big.bin": source(s3, bucket)}
    before = object_keys(s3, bucket)
    with pytest.raises(SpecError) as info:
        _run_with_limit(s3, bucket, extra_files)
    message = str(info.value)
    assert "extra_files.big.bin" in message
    assert "EXPORT_MAX_EXTRA_FILE_BYTES" in message and f"({LIMIT} bytes)" in message
    assert object_keys(s3, bucket) == before, "something was written"
    assert open_uploads(s3, bucket) == []


def test_an_extra_file_at_the_limit_is_exported(s3: Any, bucket: str) -> None:
    uri = _put(s3, bucket, "assets/exact.bin", b"e" * LIMIT)
    result = _run_with_limit(s3, bucket, {"inline.txt": "i" * LIMIT, "remote.bin": {"uri": uri}})
    assert {"inline.txt", "remote.bin"} <= set(result["extra_files"])
