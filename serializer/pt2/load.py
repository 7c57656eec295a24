"""Load a ``.pt2`` archive back: checked by :func:`~serializer.pt2.check.check_pt2_payloads`,
then read with torch's PT2 loader under ``weights_only`` loads."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Iterator

import torch

# torch.export.load logs and falls back to a pre-2.8 layout on any error, which then fails
# with a message about that layout: the PT2 loader is called directly.
from torch.export.pt2_archive._package import load_pt2

from ..errors import ArchiveError
from ..s3.client import S3Client
from ..s3.ranged import download_checked
from ..signing.keys import TrustedKeys
from ..signing.store import resolve_trusted, signed_digest
from .check import PROGRAM, check_pt2_payloads
from .export import ARCHIVE_FILE


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every ``torch.load`` inside to ``weights_only=True`` (torch's own switch,
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``): a second guard behind :func:`check_pt2_payloads`."""
    saved = {
        name: os.environ.get(name) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_pt2_file(path: str, *, source: str | None = None) -> tuple[torch.export.ExportedProgram, dict[str, bytes]]:
    """``torch.export.load`` a ``.pt2`` file, after :func:`check_pt2_payloads`; its extra
    files are read from the zip as bytes.

    Raises:
        ArchiveError: refused, or torch could not load it (naming why).
    """
    where = source or path
    check_pt2_payloads(path, source=source)
    try:
        with _weights_only_loads():
            contents = load_pt2(path)
        program = contents.exported_programs[PROGRAM]
    except KeyError as exc:
        raise ArchiveError(f"torch.export.load of {where} failed: the archive holds no program 'model'") from exc
    except (RuntimeError, ValueError, AssertionError, zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"torch.export.load of {where} failed: {exc}") from exc
    # Read as torch reads the archive (check_pt2_payloads made sure both readers agree).
    reader = torch._C.PyTorchFileReader(path)
    extras = {
        name[len("extra/") :]: bytes(reader.get_record(name))
        for name in reader.get_all_records()
        if name.startswith("extra/") and len(name) > len("extra/")
    }
    return program, extras


def load_pt2_artifact(
    client: S3Client,
    uri: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    spool_dir: str | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> tuple[torch.export.ExportedProgram, dict[str, bytes]]:
    """Download (to a temporary file, checked against ``size`` and ``sha256`` as it
    arrives) and ``torch.export.load`` a stored ``.pt2`` archive.

    With trusted keys (``trusted_keys``, else those ``EXPORT_TRUSTED_KEYS`` names) the
    export's signature is checked first, and the archive checked against the signed
    manifest's size and sha256 (which ``sha256`` and ``size``, if given, must equal).

    Raises:
        SignatureError: keys are trusted, and the export is unsigned, altered or foreign-signed.
        ArchiveError: digest mismatch, or torch could not load it.
    """
    sha256, size = signed_digest(client, uri, sha256, size, resolve_trusted(trusted_keys))
    return load_pt2_downloaded(client, uri, sha256=sha256, size=size, spool_dir=spool_dir)


def load_pt2_downloaded(
    client: S3Client, uri: str, *, sha256: str | None, size: int | None, spool_dir: str | None = None
) -> tuple[torch.export.ExportedProgram, dict[str, bytes]]:
    """:func:`load_pt2_artifact` after its signature check: download (checked against
    ``size`` and ``sha256``), then the archive checks and ``torch.export.load``.  For a
    caller that has already checked the signed manifest these digests come from
    (``open_artifact``).

    Raises:
        ArchiveError: digest mismatch, or torch could not load it.
    """
    with tempfile.TemporaryDirectory(prefix="export-worker-load-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, ARCHIVE_FILE)
        download_checked(client, uri, path, sha256=sha256, size=size)
        return load_pt2_file(path, source=uri)


def program_device(program: torch.export.ExportedProgram) -> torch.device:
    """Where a loaded program's weights live (its inputs must go there too): the device of
    its first parameter, buffer or constant tensor; the CPU for a program without any."""
    for value in [*program.state_dict.values(), *program.constants.values()]:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
