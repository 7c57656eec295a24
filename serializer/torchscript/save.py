"""``torch.jit.save`` to a path, and the one TorchScript warning this project silences."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
import zipfile
from collections.abc import Iterator, Mapping

import torch

from ..errors import ArchiveError

#: File name the archive is saved under; torch names the zip's root folder after it, so
#: every archive has the same root as one saved to a buffer ("archive/").
ARCHIVE_FILE = "archive.pt"
#: torch 2.13's deprecation of TorchScript, matched by message so no other warning is hidden.
_DEPRECATION = r"`torch\.jit\.[a-z_]+` is deprecated"


@contextlib.contextmanager
def quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warning, and only that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        yield


def check_scripted(module: object) -> None:
    if not isinstance(module, torch.jit.ScriptModule):
        raise ArchiveError(
            f"expected a ScriptModule (torch.jit.script or torch.jit.trace), got {type(module).__name__}"
        )


def save_archive(module: torch.jit.ScriptModule, path: str, extra_files: Mapping[str, bytes]) -> None:
    """``torch.jit.save`` to a path (records stream out; nothing is built in memory).

    Raises:
        ArchiveError: torch could not save the module.
    """
    check_scripted(module)
    try:
        with quiet_torchscript_deprecation():
            torch.jit.save(module, path, _extra_files=dict(extra_files))
    except (RuntimeError, OSError) as exc:
        raise ArchiveError(f"torch.jit.save failed: {exc}") from exc


@functools.cache
def produced_format_version() -> int:
    """The file-format version this torch writes for a plain module (the archive's
    ``version`` record); archives using newer operators may carry a higher one."""

    class _Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    buf = io.BytesIO()
    with quiet_torchscript_deprecation():
        torch.jit.save(torch.jit.script(_Plain()), buf)
    with zipfile.ZipFile(buf) as zf:
        name = next(n for n in zf.namelist() if n.split("/", 1)[-1] in ("version", ".data/version"))
        return int(zf.read(name).decode("ascii").strip())
