"""The hostile inputs, one list each, for the tests that throw them at the worker and at the
code behind it: the corpus of hostile specs (:data:`CORPUS`, each case what the worker must
raise and a regex its message matches), spellings of a builder outside the allow-list
(:data:`NEVER_IMPORT_SPELLINGS`), and checkpoints whose pickle would run code
(:data:`CHECKPOINTS`).
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import torch

from worker.spec import MAX_INPUT_ELEMENTS, MAX_JSON_BYTES

if TYPE_CHECKING:
    from tests.integration.conftest import WorkerProcess

#: A field given as this is left out of the spec.
DROP = object()


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


def _hub_loader(ctx: Ctx) -> dict[str, Any]:
    # The allowed module imports torch.hub's loader; called, it would unpickle the served file.
    marker = ctx.worker.shared_dir / f"pwned-{uuid.uuid4().hex[:8]}"
    served = ctx.worker.shared_dir / f"evil-{uuid.uuid4().hex[:8]}.pt"
    served.write_bytes(_zip_torch_save(marker))
    hub_dir = ctx.worker.shared_dir / f"hub-{uuid.uuid4().hex[:8]}"
    ctx.markers += [marker, hub_dir]
    url = served.as_uri()
    return ctx.spec(
        builder="tests.acme_models:load_state_dict_from_url", kwargs={"url": url, "model_dir": str(hub_dir)}
    )


def _imported_builder(ctx: Ctx) -> dict[str, Any]:
    marker = ctx.worker.shared_dir / f"called-{uuid.uuid4().hex[:8]}"
    ctx.markers.append(marker)
    return ctx.spec(builder="tests.acme_models:leave_marker", kwargs={"path": str(marker)})


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
        lambda ctx: ctx.spec(method=True),
        "SpecError",
        r"method: Input should be 'script', 'trace' or 'auto'",
        id="method-bool",
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
        r"weights s3://missing-\w+/w\.pt cannot be read$",  # missing or forbidden: one message
        id="weights-bucket-missing",
    ),
    case(
        lambda ctx: ctx.spec(weights=f"s3://{ctx.assets}/no/such/w.pt"),
        "BuildFailed",
        r"weights s3://assets-\w+/no/such/w\.pt cannot be read$",
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
        r"extra_files\.vocab\.txt: s3://missing-\w+/vocab\.txt cannot be read$",
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
        "BuilderNotAllowed",
        r"builder 'tests\.fixtures:ALL_BYTES' is a bytes, not a function or class",
        id="builder-not-callable",
        schema=False,
    ),
    case(
        _hub_loader,
        "BuilderNotAllowed",
        r"builder 'tests\.acme_models:load_state_dict_from_url' is torch\.hub:load_state_dict_from_url, "
        r"imported into tests\.acme_models, not defined there",
        id="builder-imported-hub-loader",
        schema=False,
    ),
    case(
        _imported_builder,
        "BuilderNotAllowed",
        r"builder 'tests\.acme_models:leave_marker' is tests\.acme_tools:leave_marker, imported into",
        id="builder-registered-elsewhere",
        schema=False,
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures:Settings", kwargs={"broker_url": "redis://elsewhere:6379/0"}),
        "BuilderNotAllowed",
        r"builder 'tests\.fixtures:Settings' is worker\.settings:Settings, imported into tests\.fixtures",
        id="builder-imported-class",
        schema=False,
    ),
    case(
        lambda ctx: ctx.spec(builder="tests.fixtures:scripted", kwargs={"module": {}}),
        "BuilderNotAllowed",
        r"builder 'tests\.fixtures:scripted' is not registered: the EXPORT_ALLOWED_BUILDERS entry 'tests\.fixtures'",
        id="builder-defined-not-registered",
        schema=False,
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
        r"method: Input should be 'script', 'trace' or 'auto'",
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
