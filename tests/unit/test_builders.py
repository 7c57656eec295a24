"""Building the module a spec names: allow-list, import, example inputs, scripting, devices."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures import TinyLinear, TwoInputs, Unscriptable
from worker.builders import build_module, check_allowed, example_inputs, resolve_device, to_torchscript
from worker.errors import BuilderNotAllowed, BuildFailed, DeviceUnavailable, ScriptingFailed
from worker.spec import TensorSpec, parse_spec

CPU = torch.device("cpu")
NEVER = "tests.never_import"


def spec_for(builder: str, **fields: Any) -> Any:
    return parse_spec({"name": "m", "builder": builder, "destination": "s3://bucket/prefix", **fields})


# -- allow-list -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "builder", ["acme.models:build", "acme.models.x:build", "acme.models.x.y:build", "acme.models.vision:resnet"]
)
def test_prefix_allows_the_module_and_its_submodules(builder: str) -> None:
    assert check_allowed(builder, ["acme.models"]) == builder.partition(":")[0]


@pytest.mark.parametrize("builder", ["acme.models_old:build", "acme.modelsx:build", "acme:build", "acme.model:build"])
def test_prefix_is_not_a_string_prefix(builder: str) -> None:
    with pytest.raises(BuilderNotAllowed, match="not under EXPORT_ALLOWED_BUILDERS"):
        check_allowed(builder, ["acme.models"])


def test_allow_list_entries_are_trimmed_and_empty_ones_allow_nothing() -> None:
    assert check_allowed("acme.models.x:b", [" acme.models. "]) == "acme.models.x"
    with pytest.raises(BuilderNotAllowed):
        check_allowed("acme.models:b", ["", " ", "."])
    with pytest.raises(BuilderNotAllowed, match="empty"):
        check_allowed("acme.models:b", [])


def test_error_names_the_builder_and_the_allow_list() -> None:
    with pytest.raises(BuilderNotAllowed) as info:
        check_allowed("evil.mod:f", ["worker.examples", "acme"])
    assert "'evil.mod:f'" in str(info.value)
    assert "worker.examples, acme" in str(info.value)


@pytest.fixture()
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file tests/never_import.py creates if it is ever imported."""
    path = tmp_path / "never_import.marker"
    monkeypatch.setenv("NEVER_IMPORT_MARKER", str(path))
    sys.modules.pop(NEVER, None)
    return path


def test_marker_module_does_leave_a_marker_when_imported(marker: Path) -> None:
    # The control for the next test: the marker module is observable when it is imported.
    import importlib

    try:
        importlib.import_module(NEVER)
        assert marker.exists()
    finally:
        sys.modules.pop(NEVER, None)
        sys.modules["tests"].__dict__.pop("never_import", None)


def test_builder_not_allowed_is_never_imported(marker: Path) -> None:
    spec = spec_for(f"{NEVER}:build")
    with pytest.raises(BuilderNotAllowed, match=NEVER):
        build_module(spec, ["worker.examples", "tests.fixtures"], CPU)
    assert NEVER not in sys.modules
    assert not marker.exists()


def test_build_module_calls_the_builder_with_kwargs() -> None:
    module = build_module(spec_for("tests.fixtures:tiny_linear", kwargs={"in_features": 6, "seed": 2}), ["tests"], CPU)
    assert isinstance(module, TinyLinear)
    assert module.linear.in_features == 6
    assert torch.equal(module.linear.weight, TinyLinear(6, 3, seed=2).linear.weight)


@pytest.mark.parametrize(
    ("builder", "kwargs", "words"),
    [
        ("tests.no_such_module:build", {}, ["cannot import", "tests.no_such_module"]),
        ("tests.fixtures:no_such_builder", {}, ["cannot import", "no_such_builder"]),
        ("tests.fixtures:tiny_linear", {"colour": 1}, ["failed with kwargs", "colour"]),
        ("tests.fixtures:not_a_module", {}, ["returned dict", "not a torch.nn.Module"]),
    ],
)
def test_build_failures_name_the_builder(builder: str, kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(BuildFailed) as info:
        build_module(spec_for(builder, kwargs=kwargs), ["tests"], CPU)
    for word in words:
        assert word in str(info.value)


# -- example inputs -----------------------------------------------------------------------------


def specs(*items: dict[str, Any]) -> list[TensorSpec]:
    return [TensorSpec(**item) for item in items]


MIXED = specs(
    {"shape": [3, 4], "dtype": "float32"},
    {"shape": [5], "dtype": "int64", "low": 10, "high": 13},
    {"shape": [2, 2], "dtype": "float64"},
    {"shape": [6], "dtype": "bool"},
    {"shape": [4], "dtype": "uint8"},
    {"shape": [], "dtype": "float16"},
)


def test_example_inputs_are_deterministic_per_seed() -> None:
    first = example_inputs(MIXED, 7, CPU)
    again = example_inputs(MIXED, 7, CPU)
    other = example_inputs(MIXED, 8, CPU)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_example_inputs_do_not_touch_the_global_generator() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    example_inputs(MIXED, 0, CPU)
    assert torch.equal(torch.rand(3), expected)


def test_example_inputs_respect_dtype_and_shape() -> None:
    out = example_inputs(MIXED, 0, CPU)
    assert [tuple(t.shape) for t in out] == [(3, 4), (5,), (2, 2), (6,), (4,), ()]
    assert [t.dtype for t in out] == [torch.float32, torch.int64, torch.float64, torch.bool, torch.uint8, torch.float16]
    assert all(t.device == CPU for t in out)


def test_integer_inputs_stay_within_low_and_high() -> None:
    many = specs({"shape": [10_000], "dtype": "int32", "low": -3, "high": 2})
    (t,) = example_inputs(many, 0, CPU)
    assert int(t.min()) == -3 and int(t.max()) == 1, "high is exclusive, as in torch.randint"
    (d,) = example_inputs(specs({"shape": [10_000], "dtype": "int8"}), 0, CPU)
    assert int(d.min()) >= 0 and int(d.max()) < 100, "default bounds are [0, 100)"


def test_given_values_are_used_as_they_are() -> None:
    given = specs({"value": [[1, 2], [3, 4]], "dtype": "int16"}, {"value": [0.5, -1.5], "dtype": "float64"})
    a, b = example_inputs(given, 0, CPU)
    assert torch.equal(a, torch.tensor([[1, 2], [3, 4]], dtype=torch.int16))
    assert torch.equal(b, torch.tensor([0.5, -1.5], dtype=torch.float64))


def test_given_value_that_is_not_a_tensor_fails_clearly() -> None:
    with pytest.raises(BuildFailed, match="not a float32 tensor"):
        example_inputs(specs({"value": [[1.0, 2.0], [3.0]]}), 0, CPU)


# -- scripting ------------------------------------------------------------------------------------


def test_script_and_trace_match_the_eager_module() -> None:
    module = TwoInputs().eval()
    inputs = example_inputs(specs({"shape": [3, 4]}, {"shape": [3, 5], "dtype": "int64", "low": 0, "high": 8}), 0, CPU)
    expected = module(*inputs)
    for method in ("script", "trace"):
        compiled = to_torchscript(module, method, inputs)
        assert isinstance(compiled, torch.jit.ScriptModule)
        assert torch.allclose(compiled(*inputs), expected)


def test_unscriptable_module_raises_scripting_failed_with_torchscript_message() -> None:
    with pytest.raises(ScriptingFailed) as info:
        to_torchscript(Unscriptable(), "script", ())
    message = str(info.value)
    assert message.startswith("torch.jit.script failed:")
    assert "try blocks aren't supported" in message
    assert isinstance(info.value.__cause__, Exception)


def test_trace_with_wrong_inputs_raises_scripting_failed() -> None:
    with pytest.raises(ScriptingFailed, match=r"torch\.jit\.trace failed"):
        to_torchscript(TinyLinear(in_features=4).eval(), "trace", (torch.zeros(2, 5),))


# -- devices --------------------------------------------------------------------------------------


def test_cpu_device_resolves() -> None:
    assert resolve_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA; the test is for hosts without it")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_on_a_cpu_only_host_is_unavailable(name: str) -> None:
    with pytest.raises(DeviceUnavailable, match="no CUDA"):
        resolve_device(name)
