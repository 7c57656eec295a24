"""Hostile specs against a real worker: each one fails naming its cause, writes nothing, and
the worker goes on serving.

Jobs are sent with ``export_model.apply_async(..., queue="cpu")``, bypassing the client-side
validation and routing of ``submit_export``, so the worker itself sees every bad spec; the
specs that are invalid by their schema alone are also checked to be refused by
``submit_export`` before anything is sent.  Besides the corpus: builders outside the
allow-list are never imported, however spelled; a checkpoint whose pickle would run code
never runs it; the extra-file size limit (EXPORT_MAX_EXTRA_FILE_BYTES); and a consumer
reading a hostile archive cannot be steered outside its target by an extra file's name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import torch
from botocore.exceptions import ClientError

from serializer.errors import SerializerError
from serializer.manifest.model import Manifest, manifest_uri_for
from tests.conftest import object_keys, open_uploads
from tests.integration.conftest import WorkerProcess
from worker.errors import SpecError
from worker.spec import MAX_INPUT_ELEMENTS, MAX_JSON_BYTES, parse_spec
from worker.tasks import export_model, submit_export

#: Seconds to wait for one job; generous, the machine may be busy with other tests.
JOB_TIMEOUT = 120.0
#: A field given as this is left out of the spec.
DROP = object()

pytestmark = pytest.mark.usefixtures("celery_worker")


@dataclass
class Ctx:
    """What a case may use: the worker, S3, a destination and an assets bucket, markers."""

    worker: WorkerProcess
    s3: Any
    dest: str
    assets: str
    #: Files whose existence means code ran that never should have.
    markers: list[pathlib.Path] = field(default_factory=list)
    #: Set by a case whose destination bucket does not exist.
    missing_dest: str | None = None

    def spec(self, **fields: Any) -> dict[str, Any]:
        """A small, valid export of ``tests.fixtures:tiny_linear``, with ``fields`` replaced."""
        spec: dict[str, Any] = {
            "name": "hostile",
            "builder": "tests.fixtures:tiny_linear",
            "destination": f"s3://{self.dest}/models",
            "example_inputs": [{"shape": [2, 4], "dtype": "float32"}],
        }
        spec.update(fields)
        return {k: v for k, v in spec.items() if v is not DROP}

    def inputs(self, **tensor: Any) -> dict[str, Any]:
        """The spec with one example input of the given fields."""
        return self.spec(example_inputs=[tensor])

    def extras(self, files: Any) -> dict[str, Any]:
        """The spec with ``extra_files`` (no example inputs: failing before any build)."""
        return self.spec(extra_files=files, example_inputs=DROP)

    def put(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.assets, Key=key, Body=data)
        return f"s3://{self.assets}/{key}"


Make = Callable[[Ctx], Any]


def case(
    make: Make,
    error: str,
    cause: str,
    *,
    id: str,
    schema: bool | None = None,
    marks: Any = (),
) -> Any:
    """One hostile spec: what the worker must raise (type name) and a regex its message matches.

    ``schema``: the spec is invalid by its schema alone, so ``submit_export`` refuses it
    before sending; the default is true for ``SpecError`` cases.
    """
    return pytest.param(make, error, cause, error == "SpecError" if schema is None else schema, id=id, marks=marks)


def _missing_destination(ctx: Ctx) -> dict[str, Any]:
    ctx.missing_dest = f"missing-{uuid.uuid4().hex[:12]}"
    return ctx.spec(destination=f"s3://{ctx.missing_dest}/models")


def _never_import(ctx: Ctx) -> dict[str, Any]:
    ctx.markers.append(ctx.worker.never_import_marker)
    return ctx.spec(builder="tests.never_import:build")


def _malicious_weights(ctx: Ctx) -> dict[str, Any]:
    marker = ctx.worker.shared_dir / f"pwned-{uuid.uuid4().hex[:8]}"
    ctx.markers.append(marker)
    return ctx.spec(weights=ctx.put("evil/state_dict.pt", _raw_pickle(marker)))


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA; the case is for CPU-only workers")
#: A megabyte and a bit of JSON.
_OVER_1MIB = "x" * (MAX_JSON_BYTES + 1)

CORPUS = [
    # -- not an object, missing and unknown fields ------------------------------------------------
    case(lambda ctx: [ctx.spec()], "SpecError", r"a spec is a JSON object, got list", id="spec-is-a-list"),
    case(lambda ctx: "s3://bucket/model", "SpecError", r"a spec is a JSON object, got str", id="spec-is-a-string"),
    case(lambda ctx: ctx.spec(destination=DROP), "SpecError", r"destination: Field required", id="no-destination"),
    case(lambda ctx: ctx.spec(builder=DROP), "SpecError", r"builder: Field required", id="no-builder"),
    case(
        lambda ctx: ctx.spec(colour="blue"), "SpecError", r"colour: Extra inputs are not permitted", id="unknown-field"
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], scale=2),
        "SpecError",
        r"example_inputs\.0\.scale: Extra inputs are not permitted",
        id="unknown-field-in-input",
    ),
    # -- wrong types, field by field -----------------------------------------------------------
    case(lambda ctx: ctx.spec(name=5), "SpecError", r"name: Input should be a valid string", id="name-int"),
    case(lambda ctx: ctx.spec(name=None), "SpecError", r"name: Input should be a valid string", id="name-null"),
    case(
        lambda ctx: ctx.spec(builder=["tests.fixtures", "tiny_linear"]),
        "SpecError",
        r"builder: Input should be a valid string",
        id="builder-list",
    ),
    case(
        lambda ctx: ctx.spec(kwargs=[1, 2]),
        "SpecError",
        r"kwargs: Input should be an object",
        id="kwargs-list",
    ),
    case(lambda ctx: ctx.spec(weights=42), "SpecError", r"weights: Input should be a valid string", id="weights-int"),
    case(
        lambda ctx: ctx.spec(method=True), "SpecError", r"method: Input should be 'script' or 'trace'", id="method-bool"
    ),
    case(
        lambda ctx: ctx.spec(example_inputs={"shape": [2, 4]}),
        "SpecError",
        r"example_inputs: Input should be a valid array",
        id="example-inputs-object",
    ),
    case(lambda ctx: ctx.spec(device=0), "SpecError", r"device: Input should be a valid string", id="device-int"),
    case(
        lambda ctx: ctx.spec(extra_files=["a.txt"]),
        "SpecError",
        r"extra_files: Input should be an object",
        id="extra-files-list",
    ),
    case(
        lambda ctx: ctx.spec(destination={"bucket": ctx.dest}),
        "SpecError",
        r"destination: Input should be a valid string",
        id="destination-object",
    ),
    case(
        lambda ctx: ctx.spec(verify="maybe"), "SpecError", r"verify: Input should be a valid boolean", id="verify-word"
    ),
    case(
        lambda ctx: ctx.spec(metadata="x"),
        "SpecError",
        r"metadata: Input should be an object",
        id="metadata-str",
    ),
    case(
        lambda ctx: ctx.spec(atol=-1),
        "SpecError",
        r"atol: Input should be greater than or equal to 0",
        id="atol-negative",
    ),
    case(
        lambda ctx: ctx.spec(atol=float("inf")),
        "SpecError",
        r"atol",
        id="atol-infinity",
    ),
    case(lambda ctx: ctx.spec(seed=1.5), "SpecError", r"seed: Input should be a valid integer", id="seed-fractional"),
    case(lambda ctx: ctx.spec(seed=2**63), "SpecError", r"seed: Input should be less than", id="seed-over-int64"),
    case(
        lambda ctx: ctx.inputs(shape=[True, 4]),
        "SpecError",
        r"example_inputs\.0\.shape\.0",
        id="shape-dim-bool",
    ),
    case(
        lambda ctx: ctx.inputs(shape=["2", 4]),
        "SpecError",
        r"example_inputs\.0\.shape\.0",
        id="shape-dim-string",
    ),
    case(lambda ctx: ctx.spec(seed="5"), "SpecError", r"seed", id="seed-string"),
    case(lambda ctx: ctx.spec(verify="yes"), "SpecError", r"verify", id="verify-yes"),
    # -- shapes, dtypes, bounds, values -----------------------------------------------------------
    case(
        lambda ctx: ctx.inputs(shape=[2, -1]),
        "SpecError",
        r"example_inputs\.0\.shape\.1: Input should be greater than or equal to 0",
        id="shape-negative",
    ),
    case(
        # 2**50 float32 elements: 4 PiB, refused before anything is allocated.
        lambda ctx: ctx.inputs(shape=[1 << 20, 1 << 20, 1 << 10]),
        "SpecError",
        rf"example_inputs\.0: .*more than {MAX_INPUT_ELEMENTS} elements",
        id="shape-petabytes",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[1 << 40]),
        "SpecError",
        r"example_inputs\.0\.shape\.0: Input should be less than or equal to 2147483648",
        id="shape-dim-over-2**31",
    ),
    case(lambda ctx: ctx.inputs(shape=[1] * 9), "SpecError", r"at most 8 dimensions, got 9", id="shape-nine-dims"),
    case(
        lambda ctx: ctx.inputs(shape=[2.5, 4]),
        "SpecError",
        r"example_inputs\.0\.shape\.0: Input should be a valid integer",
        id="shape-fractional",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="float8"),
        "SpecError",
        r"example_inputs\.0\.dtype: .*unknown dtype 'float8'",
        id="dtype-unknown",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="complex64"),
        "SpecError",
        r"example_inputs\.0\.dtype: .*unknown dtype 'complex64'",
        id="dtype-unsupported-complex",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="torch.float32"),
        "SpecError",
        r"unknown dtype 'torch\.float32'",
        id="dtype-torch-prefixed",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="float32", low=0, high=3),
        "SpecError",
        r"example_inputs\.0: .*'low'/'high' apply to integer dtypes only",
        id="bounds-on-float",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="int64", low=5, high=5),
        "SpecError",
        r"'low' must be below 'high'",
        id="bounds-empty",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="uint8", low=-1, high=10),
        "SpecError",
        r"outside uint8",
        id="bounds-uint8-negative",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="int8", high=1000),
        "SpecError",
        r"outside int8",
        id="bounds-int8-over",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="int64", low=0, high=2**64),
        "SpecError",
        r"outside int64",
        id="bounds-int64-overflow",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="int32", low=0.5, high=3),
        "SpecError",
        r"'low' must be a whole number for int32",
        id="bounds-fractional",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], value=[[0.0] * 4] * 2),
        "SpecError",
        r"give exactly one of 'shape' \(synthesized\) or 'value'",
        id="value-and-shape",
    ),
    case(
        lambda ctx: ctx.inputs(dtype="float32"),
        "SpecError",
        r"give exactly one of 'shape'",
        id="neither-shape-nor-value",
    ),
    case(
        lambda ctx: ctx.inputs(value=[[1, 2]], dtype="int64", low=0, high=3),
        "SpecError",
        r"'low'/'high' apply to synthesized inputs, not to a given 'value'",
        id="bounds-with-value",
    ),
    case(
        lambda ctx: ctx.inputs(value=[0.5] * (MAX_JSON_BYTES // 4)),
        "SpecError",
        rf"'value' is larger than {MAX_JSON_BYTES} bytes of JSON",
        id="value-over-json-limit",
    ),
    case(
        lambda ctx: ctx.inputs(value=[[1.0, 2.0, 3.0, 4.0], [1.0]]),
        "BuildFailed",
        r"example input value is not a float32 tensor",
        id="value-ragged",
    ),
    case(
        lambda ctx: ctx.inputs(value="four floats"),
        "BuildFailed",
        r"example input value is not a float32 tensor",
        id="value-string",
    ),
    case(
        lambda ctx: ctx.inputs(value=[[1000, 1, 2, 3]], dtype="int8"),
        "BuildFailed",
        r"example input value is not a int8 tensor",
        id="value-overflows-dtype",
    ),
    case(
        lambda ctx: ctx.inputs(shape=[2, 4], dtype="int64"),
        "BuildFailed",
        r"example_inputs: the eager module fails on them",
        id="inputs-of-the-wrong-dtype",
    ),
    # -- huge or odd kwargs / metadata -------------------------------------------------------------
    case(
        lambda ctx: ctx.spec(kwargs={"blob": _OVER_1MIB}),
        "SpecError",
        rf"kwargs: .*larger than {MAX_JSON_BYTES} bytes of JSON",
        id="kwargs-over-json-limit",
    ),
    case(
        lambda ctx: ctx.spec(metadata={"blob": _OVER_1MIB}),
        "SpecError",
        rf"metadata: .*larger than {MAX_JSON_BYTES} bytes of JSON",
        id="metadata-over-json-limit",
    ),
    case(
        lambda ctx: ctx.extras({f"f{i}.txt": "x" * (1024**2) for i in range(17)}),
        "SpecError",
        r"extra_files: .*inline extra files are larger than 16 MiB",
        id="inline-extras-over-16MiB",
    ),
    case(
        # Deep, not large: under a kilobyte of JSON that pydantic cannot serialize (its limit
        # is 255 levels), so the spec parses but has no spec_hash.
        lambda ctx: ctx.spec(kwargs={"deep": _deep(300)}),
        "SpecError",
        r"kwargs",
        id="kwargs-nested-300-deep",
    ),
    case(
        lambda ctx: ctx.spec(kwargs={"no_such_argument": 1}),
        "BuildFailed",
        r"builder 'tests\.fixtures:tiny_linear' failed with kwargs .*no_such_argument",
        id="kwargs-unknown-to-builder",
    ),
    # -- devices -------------------------------------------------------------------------------------
    case(lambda ctx: ctx.spec(device="tpu"), "SpecError", r"device: .*got 'tpu'", id="device-tpu"),
    case(lambda ctx: ctx.spec(device="cuda:-1"), "SpecError", r"device: .*got 'cuda:-1'", id="device-cuda-negative"),
    case(lambda ctx: ctx.spec(device="cpu:0"), "SpecError", r"device: .*got 'cpu:0'", id="device-cpu-indexed"),
    case(lambda ctx: ctx.spec(device="cpu\n"), "SpecError", r"device: .*got 'cpu\\n'", id="device-newline"),
    case(
        lambda ctx: ctx.spec(device="cuda"),
        "DeviceUnavailable",
        r"device 'cuda' asked for, but this worker has no CUDA",
        id="cuda-on-cpu-worker",
        marks=_NO_CUDA,
    ),
    case(
        lambda ctx: ctx.spec(device="cuda:7"),
        "DeviceUnavailable",
        r"device 'cuda:7' asked for, but this worker has no CUDA",
        id="cuda-index-on-cpu-worker",
        marks=_NO_CUDA,
    ),
    # -- URIs and buckets ----------------------------------------------------------------------------
    case(
        lambda ctx: ctx.spec(destination=f"http://{ctx.dest}/models"),
        "SpecError",
        r"destination: .*not an s3:// URI",
        id="destination-http",
    ),
    case(
        lambda ctx: ctx.spec(destination="s3://"), "SpecError", r"destination: .*bad bucket name ''", id="dest-s3-only"
    ),
    case(
        lambda ctx: ctx.spec(destination="s3:///models"),
        "SpecError",
        r"destination: .*bad bucket name '' in 's3:///models'",
        id="destination-no-bucket",
    ),
    case(
        lambda ctx: ctx.spec(destination="s3://bad_bucket!/models"),
        "SpecError",
        r"destination: .*bad bucket name 'bad_bucket!'",
        id="destination-bucket-bad-chars",
    ),
    case(
        lambda ctx: ctx.spec(destination="s3://a..b/models"),
        "SpecError",
        r"destination: .*bad bucket name 'a\.\.b'",
        id="destination-bucket-dotdot",
    ),
    case(
        lambda ctx: ctx.spec(destination=f"s3://{ctx.dest}/models\x1b[2J"),
        "SpecError",
        r"destination: .*control characters",
        id="destination-escape-sequence",
    ),
    case(
        _missing_destination,
        "UploadFailed",
        r"upload of s3://missing-\w+/models/hostile/.*NoSuchBucket",
        id="destination-bucket-missing",
        schema=False,
    ),
    case(
        lambda ctx: ctx.spec(weights=f"https://{ctx.assets}/w.pt"),
        "SpecError",
        r"weights: .*not an s3:// URI",
        id="weights-https",
    ),
    case(
        lambda ctx: ctx.spec(weights=f"s3://{ctx.assets}"),
        "SpecError",
        r"weights: .*no object key",
        id="weights-no-key",
    ),
    case(
        lambda ctx: ctx.spec(weights=f"s3://missing-{uuid.uuid4().hex[:12]}/w.pt"),
        "BuildFailed",
        r"weights s3://missing-\w+/w\.pt cannot be read \((NoSuchBucket|404)\)",
        id="weights-bucket-missing",
    ),
    case(
        lambda ctx: ctx.spec(weights=f"s3://{ctx.assets}/no/such/w.pt"),
        "BuildFailed",
        r"weights s3://assets-\w+/no/such/w\.pt cannot be read \((NoSuchKey|404)\)",
        id="weights-key-missing",
    ),
    case(
        _malicious_weights,
        "BuildFailed",
        r"weights s3://assets-\w+/evil/state_dict\.pt are not a plain state_dict \(weights_only=True refused it\)",
        id="weights-malicious-pickle",
    ),
    case(
        lambda ctx: ctx.extras({"vocab.txt": {"uri": f"s3://missing-{uuid.uuid4().hex[:12]}/vocab.txt"}}),
        "SpecError",
        r"extra_files\.vocab\.txt: s3://missing-\w+/vocab\.txt cannot be read",
        id="extra-uri-bucket-missing",
        schema=False,
    ),
    case(
        lambda ctx: ctx.extras({"vocab.txt": {"uri": "file:///etc/passwd"}}),
        "SpecError",
        r"extra_files\.vocab\.txt",
        id="extra-uri-file-scheme",
    ),
    # -- the export's name --------------------------------------------------------------------------
    case(lambda ctx: ctx.spec(name="a\x00b"), "SpecError", r"name: String should match pattern", id="name-nul"),
    case(lambda ctx: ctx.spec(name="hostile\n"), "SpecError", r"name: String should match pattern", id="name-newline"),
    case(lambda ctx: ctx.spec(name="evil\u202etxt"), "SpecError", r"name: String should match", id="name-rtl-override"),
    case(
        lambda ctx: ctx.spec(name="ho\u200dstile"),
        "SpecError",
        r"name: String should match",
        id="name-zero-width-joiner",
    ),
    case(
        lambda ctx: ctx.spec(name="\uff48\uff4f\uff53\uff54"),
        "SpecError",
        r"name: String should match",
        id="name-fullwidth",
    ),
    case(lambda ctx: ctx.spec(name="a/b"), "SpecError", r"name: String should match pattern", id="name-slash"),
    case(lambda ctx: ctx.spec(name=".."), "SpecError", r"name: .*name '\.\.' is not allowed", id="name-dotdot"),
    case(lambda ctx: ctx.spec(name="."), "SpecError", r"name: .*name '\.' is not allowed", id="name-dot"),
    case(lambda ctx: ctx.spec(name="n" * 129), "SpecError", r"name: String should match pattern", id="name-too-long"),
    case(lambda ctx: ctx.spec(name=""), "SpecError", r"name: String should match pattern", id="name-empty"),
    # -- extra-file names ----------------------------------------------------------------------------
    case(
        lambda ctx: ctx.extras({"../x": "x"}),
        "SpecError",
        r"extra file name '\.\./x' has .* '\.\.' segment",
        id="x-dotdot",
    ),
    case(lambda ctx: ctx.extras({"/abs": "x"}), "SpecError", r"extra file name '/abs' is absolute", id="x-absolute"),
    case(
        lambda ctx: ctx.extras({"a/../../b": "x"}),
        "SpecError",
        r"extra file name 'a/\.\./\.\./b' has .* '\.\.' segment",
        id="x-inner-traversal",
    ),
    case(lambda ctx: ctx.extras({"a\\b": "x"}), "SpecError", r"'a\\\\b' contains a backslash", id="x-backslash"),
    case(
        lambda ctx: ctx.extras({"C:\\x": "x"}),
        "SpecError",
        r"'C:\\\\x' starts with a drive letter",
        id="x-windows-drive",
    ),
    case(
        lambda ctx: ctx.extras({"C:/evil.txt": "x"}),
        "SpecError",
        r"C:/evil\.txt",
        id="x-windows-drive-forward-slash",
    ),
    case(lambda ctx: ctx.extras({"a\x00b": "x"}), "SpecError", r"contains the character U\+0000", id="x-nul"),
    case(lambda ctx: ctx.extras({"a\nb": "x"}), "SpecError", r"contains the character U\+000A", id="x-newline"),
    case(lambda ctx: ctx.extras({"evil\u202etxt.exe": "x"}), "SpecError", r"U\+202E", id="x-rtl-override"),
    case(lambda ctx: ctx.extras({"zero\u200dwidth": "x"}), "SpecError", r"U\+200D", id="x-zero-width-joiner"),
    case(lambda ctx: ctx.extras({"\u00e9" * 128: "x"}), "SpecError", r"longer than 255 bytes", id="x-over-255-bytes"),
    case(lambda ctx: ctx.extras({"": "x"}), "SpecError", r"extra file name must be a non-empty string", id="x-empty"),
    case(
        lambda ctx: ctx.extras({"manifest.json": "{}"}), "SpecError", r"'manifest\.json' is reserved", id="x-manifest"
    ),
    case(
        lambda ctx: ctx.extras({"export_worker/notes.txt": "x"}),
        "SpecError",
        r"extra_files\.export_worker/notes\.txt: the folder 'export_worker' is reserved",
        id="x-build-record-folder",
        schema=False,
    ),
    case(
        lambda ctx: ctx.extras({"export_worker": "x"}),
        "SpecError",
        r"extra_files\.export_worker: the folder 'export_worker' is reserved",
        id="x-build-record-folder-as-file",
        schema=False,
    ),
    case(
        # Duplicates after normalisation cannot arise: every non-normal spelling is refused.
        lambda ctx: ctx.extras({"a/b.txt": "x", "a//b.txt": "y"}),
        "SpecError",
        r"'a//b\.txt' has an empty, '\.' or '\.\.' segment",
        id="x-duplicate-double-slash",
    ),
    case(
        lambda ctx: ctx.extras({"a/b.txt": "x", "./a/b.txt": "y"}),
        "SpecError",
        r"'\./a/b\.txt' has an empty, '\.' or '\.\.' segment",
        id="x-duplicate-dot-prefix",
    ),
    case(
        lambda ctx: ctx.extras({"h\u00e9llo.txt": "x", "he\u0301llo.txt": "y"}),
        "SpecError",
        r"is not NFC-normalized Unicode",
        id="x-duplicate-nfc-nfd",
    ),
    case(lambda ctx: ctx.extras({"dir/": "x"}), "SpecError", r"'dir/' has an empty", id="x-trailing-slash"),
    case(
        lambda ctx: ctx.extras({"a.bin": {"base64": "not base64!"}}),
        "SpecError",
        r"extra file 'a\.bin': invalid base64",
        id="x-base64-invalid",
    ),
    case(
        lambda ctx: ctx.extras({"a.bin": {"base64": "YWJj="}}),
        "SpecError",
        r"extra file 'a\.bin': invalid base64 \(not canonical",
        id="x-base64-surplus-padding",
    ),
    case(
        lambda ctx: ctx.extras({"a.txt": {"path": "/etc/passwd"}}),
        "SpecError",
        r"extra_files\.a\.txt\.",
        id="x-source-unknown-form",
    ),
    case(lambda ctx: ctx.extras({"a.txt": 3}), "SpecError", r"extra_files\.a\.txt\.", id="x-source-number"),
    # -- builders, methods, scripting -----------------------------------------------------------------
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures.tiny_linear"),
        "SpecError",
        r"builder must look like 'package\.module:callable'",
        id="builder-no-colon",
    ),
    case(
        lambda ctx: ctx.spec(builder="tests/fixtures.py:tiny_linear"),
        "SpecError",
        r"builder must look like",
        id="builder-path",
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures:tiny_linear()"),
        "SpecError",
        r"builder must look like",
        id="builder-call",
    ),
    case(
        _never_import,
        "BuilderNotAllowed",
        r"builder 'tests\.never_import:build' is not under EXPORT_ALLOWED_BUILDERS",
        id="builder-outside-allow-list",
        schema=False,
    ),
    case(
        lambda ctx: ctx.spec(builder="os:system", kwargs={"command": "true"}),
        "BuilderNotAllowed",
        r"builder 'os:system' is not under EXPORT_ALLOWED_BUILDERS",
        id="builder-os-system",
        schema=False,
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures_evil:build"),
        "BuilderNotAllowed",
        r"builder 'tests\.fixtures_evil:build' is not under EXPORT_ALLOWED_BUILDERS",
        id="builder-prefix-lookalike",
        schema=False,
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures:ALL_BYTES"),
        "BuildFailed",
        r"builder 'tests\.fixtures:ALL_BYTES' failed .*'bytes' object is not callable",
        id="builder-not-callable",
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures:not_a_module"),
        "BuildFailed",
        r"builder 'tests\.fixtures:not_a_module' returned dict, not a torch\.nn\.Module",
        id="builder-returns-non-module",
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures.nothing_here:build"),
        "BuildFailed",
        r"cannot import builder 'tests\.fixtures\.nothing_here:build'",
        id="builder-submodule-missing",
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures:unscriptable"),
        "ScriptingFailed",
        r"torch\.jit\.script failed",
        id="unscriptable-module",
    ),
    case(
        lambda ctx: ctx.spec(method="onnx"),
        "SpecError",
        r"method: Input should be 'script' or 'trace'",
        id="method-onnx",
    ),
    case(
        lambda ctx: ctx.spec(method="trace", example_inputs=DROP),
        "SpecError",
        r"method 'trace' needs example_inputs",
        id="trace-without-inputs",
    ),
    case(
        lambda ctx: ctx.spec(method="trace", example_inputs=[]),
        "SpecError",
        r"method 'trace' needs example_inputs",
        id="trace-with-empty-inputs",
    ),
    case(
        lambda ctx: ctx.spec(verify=True, example_inputs=DROP),
        "SpecError",
        r"verify needs example_inputs",
        id="verify-without-inputs",
    ),
]


# -- helpers ------------------------------------------------------------------------------------


def send(spec: Any, queue: str = "cpu") -> tuple[str, Any]:
    """Send ``spec`` straight to a queue (no client-side validation); its state and value."""
    result = export_model.apply_async(args=[spec], queue=queue)
    value = result.get(timeout=JOB_TIMEOUT, propagate=False)
    return result.state, value


def assert_nothing_written(client: Any, bucket: str) -> None:
    assert object_keys(client, bucket) == [], f"objects left in {bucket}"
    assert open_uploads(client, bucket) == [], f"multipart uploads left open in {bucket}"


def assert_no_bucket(client: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        client.head_bucket(Bucket=bucket)
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchBucket"), info.value


def queue_lengths(redis_client: Any) -> tuple[int, int]:
    return int(redis_client.llen("cpu")), int(redis_client.llen("gpu"))


def check_failed(state: str, value: Any, error: str, cause: str, worker: WorkerProcess) -> None:
    assert state == "FAILURE", f"{state}: {value!r}"
    assert isinstance(value, BaseException), repr(value)
    assert type(value).__name__ == error, f"{type(value).__name__}: {value}"
    assert re.search(cause, str(value)), f"{cause!r} not found in {value}"
    assert list(worker.spool_dir.iterdir()) == [], "spool files were left behind"
    worker.assert_alive()


# -- the corpus -----------------------------------------------------------------------------------


def test_the_corpus_is_large_and_its_ids_distinct() -> None:
    ids = [p.id for p in CORPUS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


@pytest.mark.parametrize(("make", "error", "cause", "schema"), CORPUS)
def test_hostile_spec_fails_naming_its_cause_and_writes_nothing(
    celery_worker: WorkerProcess,
    worker_s3: Any,
    dest_bucket: str,
    assets_bucket: str,
    redis_client: Any,
    make: Make,
    error: str,
    cause: str,
    schema: bool,
) -> None:
    ctx = Ctx(celery_worker, worker_s3, dest_bucket, assets_bucket)
    spec = make(ctx)
    if schema:
        # Refused in the caller, naming the same cause; nothing reaches a queue.
        with pytest.raises(SpecError) as refused:
            parse_spec(spec)
        assert re.search(cause, str(refused.value)), f"{cause!r} not found in {refused.value}"
        before = queue_lengths(redis_client)
        with pytest.raises(SpecError, match=cause):
            submit_export(spec)
        assert queue_lengths(redis_client) == before, "a spec refused by submit_export was sent"

    state, value = send(spec)
    check_failed(state, value, error, cause, celery_worker)
    assert_nothing_written(worker_s3, dest_bucket)
    if ctx.missing_dest is not None:
        assert_no_bucket(worker_s3, ctx.missing_dest)
    for marker in ctx.markers:
        assert not marker.exists(), f"{marker} exists: code ran in the worker that never should have"


def test_the_worker_still_answers_and_exports_after_the_corpus(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    from worker.celery import app

    celery_worker.assert_alive()
    assert app.control.ping(timeout=5.0), "the worker does not answer a ping"
    spec = Ctx(celery_worker, worker_s3, dest_bucket, "unused").spec()
    state, value = send(spec)
    assert state == "SUCCESS", f"{state}: {value!r}\n{celery_worker.log_tail()}"
    assert value["skipped"] is False
    assert sorted(object_keys(worker_s3, dest_bucket)) == sorted(
        k.split("/", 3)[3] for k in (value["artifact_uri"], value["manifest_uri"])
    )


# -- a message the worker's own machinery cannot handle -------------------------------------------------

#: Redis database of the lone worker below, apart from the shared test worker's (0).
LONE_DB = 7


@pytest.fixture()
def lone_worker(
    redis_server: str, moto_process_endpoint: str, tmp_path: pathlib.Path
) -> Iterator[tuple[Any, WorkerProcess]]:
    """A worker of its own (own Redis database), for jobs that may kill it; and an app to send to it."""
    import redis
    from celery import Celery

    from tests.integration.conftest import ROOT, TEST_ENV
    from worker.cli.demo_services import celery_worker as celery_worker_process

    url = f"{redis_server.rsplit('/', 1)[0]}/{LONE_DB}"
    spool, shared = tmp_path / "spool", tmp_path / "shared"
    spool.mkdir()
    shared.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "CELERY_", "AWS_ENDPOINT_URL"))}
    env.update(TEST_ENV)
    env.update(
        {
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "AWS_ENDPOINT_URL_S3": moto_process_endpoint,
            "EXPORT_SPOOL_DIR": str(spool),
            "NEVER_IMPORT_MARKER": str(shared / "never_import.marker"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    app = Celery("hostile-sender", broker=url, backend=url)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json", result_accept_content=["json"]
    )
    log_path = tmp_path / "worker.log"
    node = f"hostile-lone-{uuid.uuid4().hex[:8]}@%h"
    try:
        with celery_worker_process(env, log_path=str(log_path), node=node, cwd=str(ROOT)) as proc:
            worker = WorkerProcess(proc, log_path, shared / "never_import.marker", spool, shared, moto_process_endpoint)
            deadline = time.monotonic() + 60
            while not app.control.ping(timeout=0.5):
                assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{worker.log_tail()}"
                assert time.monotonic() < deadline, f"the worker did not answer a ping:\n{worker.log_tail()}"
            yield app, worker
    finally:
        app.close()
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        pytest.param(
            lambda bucket: {
                "name": "deep",
                "builder": "tests.fixtures:tiny_linear",
                "destination": f"s3://{bucket}/deep",
                "kwargs": {"deep": _deep(500)},
            },
            r"kwargs|deep|nest",
            id="kwargs-500-deep",
        ),
        pytest.param(lambda bucket: _deep(900), r"JSON object|deep|nest", id="spec-is-a-900-deep-list"),
    ],
)
def test_a_deeply_nested_job_fails_and_the_worker_lives(
    lone_worker: tuple[Any, WorkerProcess], worker_s3: Any, dest_bucket: str, make: Callable[[str], Any], cause: str
) -> None:
    app, worker = lone_worker
    result = app.send_task("worker.tasks.export_model", args=[make(dest_bucket)], queue="cpu")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not result.ready():
        worker.assert_alive()
        assert time.monotonic() < deadline, f"no result:\n{worker.log_tail()}"
        time.sleep(0.2)
    value = result.get(timeout=1, propagate=False)
    check_failed(result.state, value, "SpecError", cause, worker)
    assert app.control.ping(timeout=5.0), "the worker does not answer a ping"
    assert_nothing_written(worker_s3, dest_bucket)


# -- builders outside the allow-list are never imported --------------------------------------------

#: Spellings of the forbidden ``tests.never_import`` (or ways around the prefix check).
NEVER_IMPORT_SPELLINGS = [
    "tests.never_import:build",
    "tests.never_import.__init__:build",
    "tests:never_import",
    "tests.fixtures.never_import:build",
    "tests.fixtures_never_import:build",
    "tests.fixtures.__init__:build",
    "tests.fixtures..never_import:build",
    " tests.never_import:build",
    "tests.never_import:build ",
    "tests.never_import :build",
    "tests.never_import:build\n",
    "tests.fixtures\n.never_import:build",
    "tests.fixtures,tests.never_import:build",
    "tests/never_import:build",
    "tests/../tests/never_import:build",
    "Tests.never_import:build",
    "TESTS.NEVER_IMPORT:build",
    "tests.\uff4eever_import:build",  # fullwidth n
    "tests.n\u0435ver_import:build",  # Cyrillic e
    "tests.never_import\u200b:build",
    "tests.fixtures:__import__",
    "tests.fixtures:__builtins__",
    "tests.fixtures:__class__",
    "worker.examples:__loader__",
    "importlib:import_module",
    "builtins:__import__",
    "runpy:run_module",
]


def test_builders_outside_the_allow_list_are_never_imported(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    marker = celery_worker.never_import_marker
    assert "tests.never_import" not in sys.modules
    kwargs_that_would_import = {"name": "tests.never_import", "mod_name": "tests.never_import"}
    for builder in NEVER_IMPORT_SPELLINGS:
        for kwargs in ({}, kwargs_that_would_import):
            spec = {
                "name": "never",
                "builder": builder,
                "kwargs": kwargs,
                "destination": f"s3://{dest_bucket}/never",
            }
            state, value = send(spec)
            assert state == "FAILURE", f"{builder!r}: {state} {value!r}"
            assert isinstance(value, BaseException)
            assert type(value).__name__ in ("SpecError", "BuilderNotAllowed", "BuildFailed"), f"{builder!r}: {value!r}"
            assert not marker.exists(), f"{builder!r} with {kwargs} imported tests.never_import: {marker.read_text()}"
            celery_worker.assert_alive()
    assert_nothing_written(worker_s3, dest_bucket)
    assert "tests.never_import" not in sys.modules


def test_allow_list_check_refuses_forbidden_modules_before_any_import() -> None:
    from worker.builders import builder_digest, check_allowed
    from worker.errors import BuilderNotAllowed

    allowed = ("worker.examples", "tests.fixtures")
    for builder in NEVER_IMPORT_SPELLINGS:
        module = builder.partition(":")[0]
        if module == "tests.fixtures" or module.startswith("tests.fixtures.") or module.startswith("worker.examples"):
            continue
        with pytest.raises(BuilderNotAllowed, match="EXPORT_ALLOWED_BUILDERS"):
            check_allowed(builder, allowed)
        with pytest.raises(BuilderNotAllowed):
            builder_digest(builder, allowed)
    assert "tests.never_import" not in sys.modules


# -- checkpoints whose pickle would run code -----------------------------------------------------------


class _System:
    """Unpickling this runs ``touch <path>`` through ``os.system``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


class _Exec:
    """Unpickling this runs Python source through ``exec``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.path)!r}, 'w').close()",))


def _raw_pickle(marker: pathlib.Path) -> bytes:
    return pickle.dumps({"linear.weight": _System(marker), "linear.bias": torch.zeros(3)}, protocol=2)


def _legacy_torch_save(marker: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"linear.weight": _System(marker)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _zip_torch_save(marker: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"linear.weight": _Exec(marker), "linear.bias": torch.zeros(3)}, buf)
    return buf.getvalue()


CHECKPOINTS = {
    "raw-pickle-os-system": _raw_pickle,
    "legacy-torch-save": _legacy_torch_save,
    "zip-exec": _zip_torch_save,
}


def test_checkpoint_payloads_are_live(tmp_path: pathlib.Path) -> None:
    # The control: each payload does run when loaded without weights_only.
    for name, make in CHECKPOINTS.items():
        marker = tmp_path / name
        data = make(marker)
        if make is _raw_pickle:
            pickle.loads(data)
        else:
            torch.load(io.BytesIO(data), weights_only=False)
        assert marker.exists(), name


@pytest.mark.parametrize("make", list(CHECKPOINTS.values()), ids=list(CHECKPOINTS))
def test_malicious_checkpoint_never_runs_in_the_worker(
    celery_worker: WorkerProcess,
    worker_s3: Any,
    dest_bucket: str,
    assets_bucket: str,
    make: Callable[[pathlib.Path], bytes],
) -> None:
    ctx = Ctx(celery_worker, worker_s3, dest_bucket, assets_bucket)
    marker = celery_worker.shared_dir / f"pwned-{uuid.uuid4().hex[:8]}"
    weights = ctx.put("evil/state_dict.pt", make(marker))
    state, value = send(ctx.spec(weights=weights))
    check_failed(
        state, value, "BuildFailed", rf"weights {re.escape(weights)} are not a plain state_dict", celery_worker
    )
    assert not marker.exists(), "the checkpoint's pickle ran in the worker"
    assert_nothing_written(worker_s3, dest_bucket)


# -- the extra-file size limit (EXPORT_MAX_EXTRA_FILE_BYTES) ---------------------------------------------

LIMIT = 1024


def _run_with_limit(s3: Any, bucket: str, extra_files: dict[str, Any], limit: int = LIMIT) -> dict[str, Any]:
    from worker.export import run_export
    from worker.settings import Settings

    settings = Settings(max_extra_file_bytes=limit, allowed_builders=("tests.fixtures",))
    spec = parse_spec(
        {
            "name": "limited",
            "builder": "tests.fixtures:tiny_linear",
            "destination": f"s3://{bucket}/limited",
            "extra_files": extra_files,
        }
    )
    return run_export(spec, settings=settings, client=s3)


def test_settings_take_the_limit_with_units() -> None:
    from worker.settings import Settings

    assert Settings().max_extra_file_bytes == 256 * 1024**2
    assert Settings(max_extra_file_bytes="16MiB").max_extra_file_bytes == 16 * 1024**2


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


def _put(s3: Any, bucket: str, key: str, data: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


# -- zip-slip: a hostile archive cannot steer a consumer outside its target ---------------------------

#: Extra-file names a hostile archive may carry (as ``archive/extra/<name>`` records).
SLIP_NAMES = ["../../evil.txt", "/etc/evil.txt", "a/../../../evil.txt", "..\\..\\evil.txt", "C:/evil.txt"]


def _archive(names: list[str]) -> bytes:
    """A stored (uncompressed) zip laid out like a TorchScript archive, with these extra names."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"not a real model")
        archive.writestr("archive/extra/ok.txt", b"fine")
        for name in names:
            archive.writestr(f"archive/extra/{name}", f"payload of {name}".encode())
    return buf.getvalue()


def _manifest_json(uri: str, data: bytes) -> bytes:
    """A manifest, as plain JSON, listing every extra record of ``data`` as it is stored."""
    entries = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.filename.startswith("archive/extra/"):
                body = archive.read(info)
                # The data follows the 30-byte local header, its name and its extra field.
                lengths = data[info.header_offset + 26 : info.header_offset + 30]
                offset = (
                    info.header_offset
                    + 30
                    + int.from_bytes(lengths[:2], "little")
                    + int.from_bytes(lengths[2:], "little")
                )
                assert data[offset : offset + len(body)] == body
                entries.append(
                    {
                        "name": info.filename.removeprefix("archive/extra/"),
                        "size": len(body),
                        "sha256": hashlib.sha256(body).hexdigest(),
                        "offset": offset,
                    }
                )
    manifest = {
        "schema_version": 2,
        "artifact": {
            "uri": uri,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "format": "torchscript",
            "format_version": 1,
            "archive_root": "archive",
            "etag": "",
        },
        "spec": {},
        "spec_hash": "0" * 64,
        "extra_files": entries,
        "producer": {"torch": "0", "python": "0", "export_worker": "0", "device": "cpu", "host": "h", "builder": None},
        "created_at": datetime.now(UTC).isoformat(),
        "verification": None,
        "metadata": {},
    }
    return json.dumps(manifest, sort_keys=True).encode()


def _store(s3: Any, bucket: str, prefix: str, names: list[str]) -> tuple[str, bytes]:
    """Store an archive with these extra names and its manifest; the archive's URI and the manifest."""
    data = _archive(names)
    uri = f"s3://{bucket}/{prefix}/model.pt"
    manifest = _manifest_json(uri, data)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/model.pt", Body=data)
    s3.put_object(Bucket=bucket, Key=manifest_uri_for(uri).split("/", 3)[3], Body=manifest)
    return uri, manifest


@pytest.fixture()
def hostile(s3: Any, bucket: str) -> tuple[str, bytes]:
    """An archive with every hostile name, and a manifest listing them, in the moto bucket."""
    return _store(s3, bucket, "hostile", SLIP_NAMES)


@pytest.fixture()
def safe(s3: Any, bucket: str) -> tuple[str, bytes]:
    """The same kind of archive with only a safe extra file: the control."""
    return _store(s3, bucket, "safe", [])


def _tree(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture()
def empty_cwd(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """An empty working directory, under an otherwise empty folder: nothing may appear in either."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert _tree(tmp_path) == ["cwd"], "a file was written"


def test_a_safe_name_reads_back_with_and_without_the_manifest(s3: Any, safe: tuple[str, bytes]) -> None:
    from serializer.consumer.extras import read_extra_file

    uri, manifest = safe
    assert read_extra_file(s3, uri, "ok.txt", manifest=Manifest.from_json(manifest)) == b"fine"
    assert read_extra_file(s3, uri, "ok.txt") == b"fine"


@pytest.mark.usefixtures("empty_cwd")
@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "zip-directory"])
@pytest.mark.parametrize("name", SLIP_NAMES)
def test_read_extra_file_refuses_unsafe_names(
    s3: Any, hostile: tuple[str, bytes], name: str, with_manifest: bool
) -> None:
    from serializer.consumer.extras import read_extra_file

    uri, manifest = hostile
    with pytest.raises(SerializerError) as info:
        read_extra_file(s3, uri, name, manifest=Manifest.from_json(manifest) if with_manifest else None)
    assert name in str(info.value) or repr(name) in str(info.value), info.value


@pytest.mark.usefixtures("empty_cwd")
@pytest.mark.parametrize("no_manifest", [False, True], ids=["manifest", "zip-directory"])
@pytest.mark.parametrize("name", SLIP_NAMES)
def test_exportctl_extra_refuses_unsafe_names(
    moto_endpoint: str,
    hostile: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    name: str,
    no_manifest: bool,
) -> None:
    from worker.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    status = main(["extra", hostile[0], name, *(["--no-manifest"] if no_manifest else [])])
    out, err = capsysbinary.readouterr()
    assert (status, out) == (1, b""), f"exit {status}, wrote {out!r}"
    assert b"error:" in err


def test_exportctl_extra_writes_a_safe_name_to_stdout_only(
    moto_endpoint: str,
    safe: tuple[str, bytes],
    empty_cwd: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    from worker.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    assert main(["extra", safe[0], "ok.txt"]) == 0
    assert main(["extra", safe[0], "ok.txt", "--no-manifest"]) == 0
    assert capsysbinary.readouterr().out == b"finefine"
    assert _tree(empty_cwd) == []


@pytest.mark.parametrize("name", SLIP_NAMES)
def test_manifest_from_json_refuses_unsafe_extra_names(name: str) -> None:
    from serializer.errors import ManifestError

    manifest = _manifest_json("s3://bucket/hostile/model.pt", _archive([name]))
    with pytest.raises(ManifestError, match="extra_files"):
        Manifest.from_json(manifest)


def test_exported_archives_hold_only_safe_names(s3: Any, bucket: str) -> None:
    # The producing side: every record of a real export lies under the archive's root and
    # every extra file's name passes the name rules, so extracting it cannot leave a target.
    from serializer.archive.extras import validate_extra_name

    result = _run_with_limit(s3, bucket, {"docs/readme.md": "# hi\n", "labels.txt": "a\nb\n"}, limit=1024**2)
    data = s3.get_object(Bucket=bucket, Key=result["artifact_uri"].split("/", 3)[3])["Body"].read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    root = names[0].split("/", 1)[0]
    for name in names:
        assert name.startswith(f"{root}/") and validate_extra_name(name) == name
    raw = s3.get_object(Bucket=bucket, Key=manifest_uri_for(result["artifact_uri"]).split("/", 3)[3])["Body"].read()
    for entry in Manifest.from_json(raw).extra_files:
        assert validate_extra_name(entry.name) == entry.name
