"""The export spec: the CONTRACT's fields accepted, everything else refused with the field named."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from worker.celery import CPU_QUEUE, GPU_QUEUE, route_task
from worker.errors import SpecError
from worker.spec import ExportSpec, TensorSpec, parse_spec

MINIMAL: dict[str, Any] = {
    "name": "tiny-classifier",
    "builder": "worker.examples:tiny_classifier",
    "destination": "s3://models/prod",
}

#: Every field the CONTRACT lists, each extra-file form among them.
FULL: dict[str, Any] = {
    "name": "resnet_50.v2",
    "builder": "acme.models.vision:resnet50",
    "kwargs": {"classes": 10, "layers": [3, 4, 6, 3]},
    "weights": "s3://weights/resnet50/state_dict.pt",
    "method": "script",
    "example_inputs": [{"shape": [2, 3, 224, 224], "dtype": "float32"}],
    "device": "cpu",
    "extra_files": {
        "labels.txt": "cat\ndog\n",
        "docs/README.md": {"text": "# resnet\n"},
        "config.bin": {"base64": base64.b64encode(b"\x00\x01\xff").decode()},
        "vocab/tokens.json": {"uri": "s3://assets/vocab/tokens.json"},
    },
    "destination": "s3://models/prod/",
    "verify": True,
    "metadata": {"owner": "vision-team", "ticket": 1234},
}

CONTRACT_EXAMPLES: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "full": FULL,
    "trace": {
        **MINIMAL,
        "method": "trace",
        "example_inputs": [
            {"shape": [4, 16], "dtype": "float32"},
            {"shape": [4, 7], "dtype": "int64", "low": 0, "high": 50},
        ],
    },
    "given values": {**MINIMAL, "example_inputs": [{"value": [[1.0, 2.0], [3.0, 4.0]], "dtype": "float64"}]},
    "cuda": {**MINIMAL, "device": "cuda"},
    "cuda:N": {**MINIMAL, "device": "cuda:3"},
    "verify off": {**MINIMAL, "example_inputs": [{"shape": [1, 16]}], "verify": False},
    "bucket only": {**MINIMAL, "destination": "s3://models"},
}


def with_(**changes: Any) -> dict[str, Any]:
    """MINIMAL with fields replaced (a value of ``...`` removes the field)."""
    spec = {**MINIMAL, **changes}
    return {k: v for k, v in spec.items() if v is not ...}


def inputs(**tensor: Any) -> dict[str, Any]:
    """MINIMAL with one example input."""
    return with_(example_inputs=[tensor])


def refused(data: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


# -- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", list(CONTRACT_EXAMPLES.values()), ids=list(CONTRACT_EXAMPLES))
def test_contract_examples_are_accepted(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    assert isinstance(spec, ExportSpec)
    assert spec.name == data["name"]
    assert spec.builder == data["builder"]
    # Round trip: the JSON form parses to the same spec.
    assert parse_spec(spec.to_json_dict()) == spec


def test_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.method == "script"
    assert spec.device == "cpu"
    assert spec.kwargs == {} and spec.metadata == {} and spec.extra_files == {}
    assert spec.weights is None and spec.example_inputs is None and spec.verify is None


def test_full_spec_keeps_every_extra_file_form() -> None:
    spec = parse_spec(FULL)
    kinds = {name: type(source).__name__ for name, source in spec.extra_files.items()}
    assert kinds == {
        "labels.txt": "str",
        "docs/README.md": "ExtraText",
        "config.bin": "ExtraBase64",
        "vocab/tokens.json": "ExtraURI",
    }
    assert spec.destination == "s3://models/prod", "a trailing slash is not part of the prefix"


def test_parse_spec_passes_a_parsed_spec_through() -> None:
    spec = parse_spec(MINIMAL)
    assert parse_spec(spec) is spec


def test_tensor_spec_of_a_given_value() -> None:
    item = TensorSpec(value=[1, 2, 3], dtype="int32")
    assert item.shape is None and item.value == [1, 2, 3]


# -- refused, with the field named ---------------------------------------------------------


REFUSED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown field": (with_(colour="blue"), ["colour", "not permitted"]),
    "unknown field in an input": (inputs(shape=[1], scale=2), ["example_inputs.0.scale"]),
    "missing name": (with_(name=...), ["name", "required"]),
    "missing builder": (with_(builder=...), ["builder", "required"]),
    "missing destination": (with_(destination=...), ["destination", "required"]),
    "name with a space": (with_(name="my model"), ["name"]),
    "name with a slash": (with_(name="a/b"), ["name"]),
    "name with a newline": (with_(name="model\n"), ["name"]),
    "empty name": (with_(name=""), ["name"]),
    "name too long": (with_(name="a" * 129), ["name"]),
    "builder without callable": (with_(builder="worker.examples"), ["builder", "package.module:callable"]),
    "builder with path": (with_(builder="worker/examples.py:tiny"), ["builder"]),
    "builder with two colons": (with_(builder="a:b:c"), ["builder"]),
    "builder with a call": (with_(builder="worker.examples:tiny_classifier()"), ["builder"]),
    "builder with a trailing newline": (with_(builder="worker.examples:tiny_classifier\n"), ["builder"]),
    "device tpu": (with_(device="tpu"), ["device", "tpu"]),
    "device cuda:x": (with_(device="cuda:x"), ["device", "cuda:x"]),
    "device CUDA": (with_(device="CUDA"), ["device"]),
    "device with a trailing newline": (with_(device="cpu\n"), ["device"]),
    "method compile": (with_(method="compile"), ["method"]),
    "bad dtype": (inputs(shape=[1], dtype="float8"), ["example_inputs.0.dtype", "float8"]),
    "shape too large": (inputs(shape=[1 << 20, 1 << 20]), ["example_inputs.0", "elements"]),
    "negative shape": (inputs(shape=[2, -1]), ["example_inputs.0.shape.1"]),
    "too many dims": (inputs(shape=[1] * 9), ["example_inputs.0", "dimensions"]),
    "shape and value": (inputs(shape=[1], value=[1.0]), ["example_inputs.0", "exactly one"]),
    "neither shape nor value": (inputs(dtype="float32"), ["example_inputs.0", "exactly one"]),
    "low on float": (inputs(shape=[1], dtype="float32", low=0), ["example_inputs.0", "integer dtypes"]),
    "high on bool": (inputs(shape=[1], dtype="bool", high=1), ["example_inputs.0", "integer dtypes"]),
    "low not below high": (inputs(shape=[1], dtype="int64", low=5, high=5), ["example_inputs.0", "below"]),
    "low above the default high": (inputs(shape=[1], dtype="int64", low=200), ["example_inputs.0", "[200, 100)"]),
    "bounds outside the dtype": (inputs(shape=[1], dtype="int8", low=-1000, high=10), ["example_inputs.0", "int8"]),
    "negative low for uint8": (inputs(shape=[1], dtype="uint8", low=-1, high=10), ["example_inputs.0", "uint8"]),
    "fractional bound": (inputs(shape=[1], dtype="int32", low=0.5, high=3), ["example_inputs.0", "whole number"]),
    "trace without inputs": (with_(method="trace"), ["trace", "example_inputs"]),
    "trace with empty inputs": (with_(method="trace", example_inputs=[]), ["trace", "example_inputs"]),
    "verify without inputs": (with_(verify=True), ["verify", "example_inputs"]),
    "destination not s3": (with_(destination="https://models/prod"), ["destination", "s3://"]),
    "destination bad bucket": (with_(destination="s3://a/prefix"), ["destination", "bucket"]),
    "weights not s3": (with_(weights="/tmp/weights.pt"), ["weights", "s3://"]),
    "weights without key": (with_(weights="s3://weights"), ["weights", "key"]),
    "weights with control char": (with_(weights="s3://weights/a\x00b.pt"), ["weights", "control"]),
    "extra name traversal": (with_(extra_files={"../../etc/passwd": "x"}), ["extra_files", "'..'"]),
    "extra name inner traversal": (with_(extra_files={"a/../../b": "x"}), ["extra_files", "'..'"]),
    "extra name absolute": (with_(extra_files={"/etc/passwd": "x"}), ["extra_files", "absolute"]),
    "extra name backslash": (with_(extra_files={"a\\b": "x"}), ["extra_files", "backslash"]),
    "extra name NUL": (with_(extra_files={"a\x00b": "x"}), ["extra_files", "U+0000"]),
    "extra name control": (with_(extra_files={"a\nb": "x"}), ["extra_files", "U+000A"]),
    "extra name bidi override": (with_(extra_files={"a\u202eb": "x"}), ["extra_files", "U+202E"]),
    "extra name too long": (with_(extra_files={"a" * 256: "x"}), ["extra_files", "255 bytes"]),
    "extra name reserved": (with_(extra_files={"manifest.json": "x"}), ["extra_files", "reserved"]),
    "extra name empty": (with_(extra_files={"": "x"}), ["extra_files"]),
    "invalid base64": (with_(extra_files={"a.bin": {"base64": "not base64!"}}), ["extra_files", "base64"]),
    "non-canonical base64": (with_(extra_files={"a.bin": {"base64": "YWJj="}}), ["extra_files", "base64"]),
    "extra uri not s3": (with_(extra_files={"a.txt": {"uri": "ftp://host/a.txt"}}), ["extra_files.a.txt", "s3://"]),
    "extra source unknown key": (with_(extra_files={"a.txt": {"path": "/etc/passwd"}}), ["extra_files.a.txt"]),
    "extra source number": (with_(extra_files={"a.txt": 3}), ["extra_files.a.txt"]),
    "kwargs not an object": (with_(kwargs=[1, 2]), ["kwargs"]),
    "verify not a bool": (with_(verify="maybe"), ["verify"]),
}


@pytest.mark.parametrize(("data", "words"), list(REFUSED.values()), ids=list(REFUSED))
def test_bad_specs_are_refused_naming_the_field(data: dict[str, Any], words: list[str]) -> None:
    message = refused(data)
    assert message.startswith("invalid spec:")
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("data", [None, [], "spec", 3, b"{}"], ids=repr)
def test_a_spec_that_is_not_an_object_is_refused(data: Any) -> None:
    assert "JSON object" in refused(data)


def test_every_problem_is_named_at_once() -> None:
    message = refused(with_(name="bad name", device="tpu", colour=1))
    assert "name:" in message and "device:" in message and "colour:" in message


def test_reserved_build_record_folder_is_refused_by_the_job() -> None:
    # Refused when the job resolves extra files (no S3 access is needed to refuse it).
    from worker.export import resolve_extra_files

    spec = parse_spec(with_(extra_files={"export_worker/build.json": "{}"}))
    with pytest.raises(SpecError, match="export_worker"):
        resolve_extra_files(spec, client=None)


# -- derived properties ----------------------------------------------------------------------


def test_spec_hash_is_stable_across_key_order() -> None:
    reordered = {k: FULL[k] for k in reversed(list(FULL))}
    reordered["kwargs"] = {"layers": [3, 4, 6, 3], "classes": 10}
    reordered["extra_files"] = dict(reversed(list(FULL["extra_files"].items())))
    assert list(reordered) != list(FULL)
    assert parse_spec(reordered).spec_hash == parse_spec(FULL).spec_hash


def test_spec_hash_differs_when_the_spec_does() -> None:
    base = parse_spec(FULL).spec_hash
    assert len(base) == 64 and int(base, 16) >= 0
    assert parse_spec({**FULL, "kwargs": {"classes": 11, "layers": [3, 4, 6, 3]}}).spec_hash != base
    assert parse_spec({**FULL, "metadata": {}}).spec_hash != base
    assert parse_spec({**FULL, "device": "cuda"}).spec_hash != base


def test_spec_hash_counts_defaults_as_given() -> None:
    explicit = {**MINIMAL, "method": "script", "device": "cpu", "kwargs": {}, "metadata": {}}
    assert parse_spec(explicit).spec_hash == parse_spec(MINIMAL).spec_hash


@pytest.mark.parametrize(
    ("device", "queue"), [("cpu", "cpu"), ("cuda", "gpu"), ("cuda:0", "gpu"), ("cuda:1", "gpu"), ("cuda:15", "gpu")]
)
def test_queue_follows_the_device(device: str, queue: str) -> None:
    assert parse_spec(with_(device=device)).queue == queue


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, False),
        ({"example_inputs": [{"shape": [1, 16]}]}, True),
        ({"example_inputs": [{"shape": [1, 16]}], "verify": False}, False),
        ({"example_inputs": [{"shape": [1, 16]}], "verify": True}, True),
        ({"verify": False}, False),
    ],
)
def test_should_verify_defaults_to_having_inputs(changes: dict[str, Any], expected: bool) -> None:
    assert parse_spec(with_(**changes)).should_verify is expected


def test_int_bounds_default_and_given() -> None:
    assert TensorSpec(shape=[1], dtype="int64").int_bounds() == (0, 100)
    assert TensorSpec(shape=[1], dtype="int8", low=-5).int_bounds() == (-5, 100)
    assert TensorSpec(shape=[1], dtype="uint8", low=10, high=256).int_bounds() == (10, 256)


# -- routing ----------------------------------------------------------------------------------

EXPORT = "worker.tasks.export_model"


@pytest.mark.parametrize(
    ("device", "queue"),
    [("cuda", GPU_QUEUE), ("cuda:1", GPU_QUEUE), ("cpu", CPU_QUEUE), (None, CPU_QUEUE)],
)
def test_route_task_sends_exports_by_device(device: str | None, queue: str) -> None:
    spec = dict(MINIMAL) if device is None else with_(device=device)
    assert route_task(EXPORT, [spec], {}, {}) == {"queue": queue}
    assert route_task(EXPORT, (), {"spec": spec}, {}) == {"queue": queue}


def test_route_task_of_an_odd_argument_goes_to_cpu() -> None:
    assert route_task(EXPORT, ["not a dict"], {}, {}) == {"queue": CPU_QUEUE}
    assert route_task(EXPORT, None, None, {}) == {"queue": CPU_QUEUE}


@pytest.mark.parametrize("name", ["worker.tasks.reexport", "celery.ping", "other.export_model"])
def test_route_task_leaves_other_tasks_alone(name: str) -> None:
    assert route_task(name, [with_(device="cuda")], {}, {}) is None


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="name"):
        parse_spec({"name": name, "builder": "worker.examples:tiny_classifier", "destination": "s3://bkt/x"})


def test_low_high_with_a_given_value_is_refused() -> None:
    spec = {
        "name": "m",
        "builder": "worker.examples:tiny_classifier",
        "destination": "s3://bkt/x",
        "example_inputs": [{"value": [1, 2], "dtype": "int64", "low": 0}],
    }
    with pytest.raises(SpecError, match=r"example_inputs\.0"):
        parse_spec(spec)
