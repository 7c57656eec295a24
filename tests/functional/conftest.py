"""Fixtures of the functional tests: moto's S3 in the test process, no server, no socket.

``s3`` and ``bucket`` here replace the moto-server ones of ``tests/conftest.py`` for this
tier.  Each module gets its own in-process store (``in_process_s3``), which module-scoped
fixtures that export once and read many times depend on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def in_process_s3() -> Iterator[None]:
    """moto's in-process S3 for one module: every boto3 client made without an endpoint uses it."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture()
def s3(in_process_s3: None) -> Any:
    """A client of the in-process store, pool sized for the writers in the tests."""
    from serializer.s3.client import make_s3_client

    return make_s3_client(max_pool_connections=8)


@pytest.fixture()
def bucket(s3: Any) -> str:
    """A fresh, empty bucket in the in-process store."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name
