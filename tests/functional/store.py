"""What the functional tests of bulk runs share: a tiny spec, an export of it into the
in-process store, and JSON objects read from and written to that store."""

from __future__ import annotations

import json
from typing import Any

from serializer.s3.uri import parse_s3_uri
from tests.fixtures import settings
from worker.export import run_export
from worker.spec import ExportSpec, parse_spec


def spec_data(bucket: str, name: str = "tiny", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 4, "classes": 2},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
        **fields,
    }


def export(client: Any, bucket: str, name: str = "tiny", **fields: Any) -> tuple[ExportSpec, dict[str, Any]]:
    spec = parse_spec(spec_data(bucket, name, **fields))
    return spec, run_export(spec, settings=settings(), client=client)


def get_json(client: Any, uri: str) -> Any:
    target = parse_s3_uri(uri)
    return json.loads(client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())


def put(client: Any, uri: str, body: bytes | str) -> None:
    target = parse_s3_uri(uri)
    client.put_object(Bucket=target.bucket, Key=target.key, Body=body.encode() if isinstance(body, str) else body)
