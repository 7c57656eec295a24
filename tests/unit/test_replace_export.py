"""The builder's digest recorded in new manifests: it follows the builder's source file, and
outside the allow-list nothing is imported to compute it."""

from __future__ import annotations

import hashlib
import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.builders import builder_digest
from worker.errors import BuilderNotAllowed


@pytest.fixture()
def temp_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder on sys.path for modules written by a test, and a unique name prefix for them."""
    prefix = f"tmpbuilders_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, prefix
    for name in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[name]


MODULE = "from torch import nn\n\n\ndef build() -> nn.Module:\n    return nn.Identity()\n"


def test_builder_digest_follows_the_source_file(temp_modules: tuple[Path, str]) -> None:
    folder, name = temp_modules
    path = folder / f"{name}.py"
    path.write_text(MODULE)
    importlib.invalidate_caches()
    builder, allowed = f"{name}:build", [name]
    first = builder_digest(builder, allowed)
    assert first == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert builder_digest(builder, allowed) == first, "same file, same digest"
    assert name not in sys.modules, "the digest reads the file, it does not import the module"
    path.write_text(MODULE + "\n# changed\n")
    second = builder_digest(builder, allowed)
    assert second == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert second != first
    # Also once the module is imported: the digest is of the file as it is on disk now.
    importlib.import_module(name)
    path.write_text(MODULE + "\n# changed again\n")
    assert builder_digest(builder, allowed) not in (first, second)


def test_builder_digest_outside_the_allow_list_imports_nothing(temp_modules: tuple[Path, str], tmp_path: Path) -> None:
    folder, name = temp_modules
    marker = tmp_path / "imported.marker"
    package = folder / name
    package.mkdir()
    (package / "__init__.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n")
    (package / "models.py").write_text(MODULE)
    importlib.invalidate_caches()
    builder = f"{name}.models:build"
    with pytest.raises(BuilderNotAllowed, match="EXPORT_ALLOWED_BUILDERS") as info:
        builder_digest(builder, ["worker.examples", f"{name}.other"])
    assert builder in str(info.value)
    assert not marker.exists()
    assert not any(m.startswith(name) for m in sys.modules)
    # The control: allowed, finding the module's file imports its parent package.
    assert builder_digest(builder, [name]) == "sha256:" + hashlib.sha256(MODULE.encode()).hexdigest()
    assert marker.exists()


@pytest.mark.parametrize("builder", ["sys:build", "tmpbuilders_missing_module:build"])
def test_builder_digest_of_a_module_without_a_source_file_is_none(builder: str) -> None:
    module = builder.partition(":")[0]
    assert builder_digest(builder, [module]) is None
