"""The builder allow-list: exact entries, module entries of registered builders, and names a
module only imports, refused before anything is called."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import tests.acme_models
from tests.fixtures import TinyLinear
from tests.hostile_corpus import _zip_torch_save
from worker.allowlist import check_allowed, register_builder, resolve_builder
from worker.builders import build_module, builder_digest
from worker.errors import BuilderNotAllowed, BuildFailed
from worker.spec import parse_spec

CPU = torch.device("cpu")
ACME = "tests.acme_models"
NEVER = "tests.never_import"


def spec_for(builder: str, **fields: Any) -> Any:
    return parse_spec({"name": "m", "builder": builder, "destination": "s3://bucket/prefix", **fields})


# -- the attack: a name the allowed module only imports ----------------------------------------


@pytest.fixture()
def evil_url(tmp_path: Path) -> tuple[str, Path, Path]:
    """A checkpoint whose unpickling creates a marker, as a ``file://`` URL (no socket), and
    the folder torch.hub would download it to."""
    marker = tmp_path / "pwned.marker"
    served = tmp_path / "served" / "evil.pt"
    served.parent.mkdir()
    served.write_bytes(_zip_torch_save(marker))
    hub_dir = tmp_path / "hub"
    return served.as_uri(), marker, hub_dir


def test_the_imported_torch_hub_loader_does_run_the_pickle(evil_url: tuple[str, Path, Path]) -> None:
    # The control for the next test: called, the name the attack gives runs the checkpoint's code.
    url, marker, hub_dir = evil_url
    tests.acme_models.load_state_dict_from_url(url, model_dir=str(hub_dir), progress=False)
    assert marker.exists()


@pytest.mark.parametrize("allowed", [[ACME], ["tests"], [f"{ACME}:load_state_dict_from_url"]])
def test_an_imported_loader_is_refused_and_never_called(evil_url: tuple[str, Path, Path], allowed: list[str]) -> None:
    url, marker, hub_dir = evil_url
    spec = spec_for(f"{ACME}:load_state_dict_from_url", kwargs={"url": url, "model_dir": str(hub_dir)})
    with pytest.raises(BuilderNotAllowed) as info:
        build_module(spec, allowed, CPU)
    message = str(info.value)
    assert "torch.hub:load_state_dict_from_url, imported into tests.acme_models, not defined there" in message
    assert not marker.exists(), "the checkpoint's code ran"
    assert not hub_dir.exists(), "something was downloaded"


def test_a_builder_registered_elsewhere_and_imported_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "called.marker"
    for allowed in ([ACME], [f"{ACME}:leave_marker"]):
        with pytest.raises(
            BuilderNotAllowed, match=r"tests\.acme_tools:leave_marker, imported into tests\.acme_models"
        ):
            build_module(spec_for(f"{ACME}:leave_marker", kwargs={"path": str(marker)}), allowed, CPU)
        assert not marker.exists()
    # The control: under its own name, where its module is allowed, it is a builder.
    build_module(spec_for("tests.acme_tools:leave_marker", kwargs={"path": str(marker)}), ["tests.acme_tools"], CPU)
    assert marker.exists()


@pytest.mark.parametrize("allowed", [[ACME], [f"{ACME}:Linear"]])
def test_a_class_defined_elsewhere_and_imported_is_refused(allowed: list[str]) -> None:
    with pytest.raises(BuilderNotAllowed, match=r"torch\.nn\.modules\.linear:Linear, imported into tests\.acme_models"):
        resolve_builder(f"{ACME}:Linear", allowed)


@pytest.mark.parametrize(
    ("builder", "kind"),
    [("tests.fixtures:ALL_BYTES", "bytes"), (f"{ACME}:nn", "module"), ("tests.fixtures:__builtins__", "dict")],
)
def test_what_is_not_a_function_or_class_is_refused(builder: str, kind: str) -> None:
    for allowed in ([builder.partition(":")[0]], [builder]):
        with pytest.raises(BuilderNotAllowed, match=f"is a {kind}, not a function or class"):
            resolve_builder(builder, allowed)


def test_attributes_of_the_module_object_are_not_looked_up() -> None:
    with pytest.raises(BuildFailed, match="has no attribute '__class__'"):
        resolve_builder("tests.fixtures:__class__", ["tests.fixtures"])


# -- module entries: registered builders only --------------------------------------------------


def test_a_module_entry_allows_its_registered_builders() -> None:
    module = build_module(spec_for(f"{ACME}:build_classifier", kwargs={"in_features": 5, "seed": 1}), [ACME], CPU)
    assert isinstance(module, torch.nn.Linear) and module.in_features == 5
    cls = build_module(spec_for(f"{ACME}:Classifier", kwargs={"classes": 7}), [ACME], CPU)
    assert isinstance(cls, tests.acme_models.Classifier) and cls.linear.out_features == 7


def test_a_module_entry_refuses_what_its_module_defines_but_does_not_register() -> None:
    with pytest.raises(
        BuilderNotAllowed, match=r"'tests\.acme_models:unregistered' is not registered.*'tests\.acme_models'"
    ):
        build_module(spec_for(f"{ACME}:unregistered"), [ACME], CPU)


def test_a_registered_builder_in_a_submodule_under_a_prefix_entry_passes() -> None:
    for allowed in (["tests"], [" tests. "]):
        assert isinstance(build_module(spec_for(f"{ACME}:build_classifier"), allowed, CPU), torch.nn.Linear)
        assert isinstance(build_module(spec_for("tests.fixtures:tiny_linear"), allowed, CPU), TinyLinear)
    with pytest.raises(BuilderNotAllowed, match="not registered"):
        build_module(spec_for(f"{ACME}:unregistered"), ["tests"], CPU)


# -- exact entries: that callable only -----------------------------------------------------------


def test_an_exact_entry_allows_that_callable_only() -> None:
    allowed = [f"{ACME}:unregistered"]
    # Named exactly, a function defined there needs no registration.
    assert isinstance(build_module(spec_for(f"{ACME}:unregistered"), allowed, CPU), torch.nn.Linear)
    for other in (f"{ACME}:build_classifier", f"{ACME}:Classifier", f"{ACME}.sub:unregistered", "tests:unregistered"):
        with pytest.raises(BuilderNotAllowed, match="is not under EXPORT_ALLOWED_BUILDERS"):
            check_allowed(other, allowed)
        with pytest.raises(BuilderNotAllowed, match="is not under EXPORT_ALLOWED_BUILDERS"):
            resolve_builder(other, allowed)


def test_an_exact_entry_imports_nothing_for_another_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "never_import.marker"
    monkeypatch.setenv("NEVER_IMPORT_MARKER", str(marker))
    sys.modules.pop(NEVER, None)
    for allowed in ([f"{NEVER}:other"], [f"{NEVER}.x:build"], [f"{ACME}:build_classifier"]):
        with pytest.raises(
            BuilderNotAllowed, match=r"'tests\.never_import:build' is not under EXPORT_ALLOWED_BUILDERS"
        ):
            build_module(spec_for(f"{NEVER}:build"), allowed, CPU)
    assert NEVER not in sys.modules
    assert not marker.exists()


def test_an_exact_entry_is_not_a_prefix() -> None:
    with pytest.raises(BuilderNotAllowed):
        check_allowed(f"{ACME}:build_classifier_v2", [f"{ACME}:build_classifier"])
    assert check_allowed(f"{ACME}:build_classifier", [f" {ACME}:build_classifier "]) == ACME


# -- the decorator ---------------------------------------------------------------------------------


def test_register_builder_returns_what_it_registers() -> None:
    assert tests.acme_models.build_classifier.__name__ == "build_classifier"
    assert isinstance(tests.acme_models.Classifier, type)


@pytest.mark.parametrize("obj", [lambda: None, print, torch.nn.Linear(1, 1), 3])
def test_register_builder_takes_only_top_level_functions_and_classes(obj: Any) -> None:
    with pytest.raises(TypeError, match="register_builder takes"):
        register_builder(obj)


def test_register_builder_refuses_a_nested_function() -> None:
    def inner() -> torch.nn.Module:
        return torch.nn.Identity()

    with pytest.raises(TypeError, match="top-level"):
        register_builder(inner)


# -- the digest ------------------------------------------------------------------------------------


@pytest.mark.parametrize("allowed", [[ACME], ["tests"], [f"{ACME}:build_classifier"]])
def test_builder_digest_under_either_kind_of_entry(allowed: list[str]) -> None:
    source = Path(tests.acme_models.__file__).read_bytes()
    expected = "sha256:" + hashlib.sha256(source).hexdigest()
    assert builder_digest(f"{ACME}:build_classifier", allowed) == expected


def test_builder_digest_refuses_a_builder_no_entry_names() -> None:
    with pytest.raises(BuilderNotAllowed, match="EXPORT_ALLOWED_BUILDERS"):
        builder_digest(f"{ACME}:unregistered", [f"{ACME}:build_classifier"])
