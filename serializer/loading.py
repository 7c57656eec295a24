"""Loading a stored archive back, checked against its digest, and comparing outputs."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import ArchiveError
from .manifest import PT2_SUFFIX, Manifest
from .reader import read_checked
from .s3uri import parse_s3_uri
from .torchscript import quiet_torchscript_deprecation


def download_checked(client: Any, uri: str, path: str, *, sha256: str | None = None, size: int | None = None) -> None:
    """Stream the object at ``uri`` to ``path`` by parallel ranged GETs (bounded memory),
    checking its size and sha256 as it arrives.

    Raises:
        ArchiveError: the bytes differ from what was expected.
    """
    target = parse_s3_uri(uri)
    stored = int(client.head_object(Bucket=target.bucket, Key=target.key)["ContentLength"])
    if size is not None and stored != size:
        raise ArchiveError(f"{uri}: {stored} bytes stored, {size} expected")
    with open(path, "wb") as out:
        read_checked(client, uri, size=stored, sha256=sha256, sink=out.write)


def load_artifact(
    client: Any,
    uri: str,
    *,
    map_location: str | torch.device | None = "cpu",
    extra_names: Iterable[str] = (),
    sha256: str | None = None,
    size: int | None = None,
    spool_dir: str | None = None,
) -> tuple[torch.jit.ScriptModule, dict[str, bytes]]:
    """Download (to a temporary file, not memory), check and ``torch.jit.load`` an archive.

    ``torch.jit.load`` puts every module on the CPU unless ``map_location`` says otherwise,
    whatever device it was saved from.

    Returns:
        The module and the requested extra files' bytes.

    Raises:
        ArchiveError: digest mismatch, or torch could not load it.
    """
    if parse_s3_uri(uri).key.endswith(PT2_SUFFIX):
        raise ArchiveError(
            f"{uri} is a .pt2 archive, not TorchScript: load it with open_artifact or serializer.pt2.load_pt2_artifact"
        )
    with tempfile.TemporaryDirectory(prefix="export-worker-load-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, "archive.pt")
        download_checked(client, uri, path, sha256=sha256, size=size)
        extras: dict[str, Any] = dict.fromkeys(extra_names, "")
        try:
            with quiet_torchscript_deprecation():
                module = torch.jit.load(path, map_location=map_location, _extra_files=extras)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ArchiveError(f"torch.jit.load of {uri} failed: {exc}") from exc
    return module, {k: v if isinstance(v, bytes) else str(v).encode() for k, v in extras.items()}


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for k in sorted(value) for t in flatten_outputs(value[k])]
    if isinstance(value, list | tuple):
        return [t for v in value for t in flatten_outputs(v)]
    if isinstance(value, int | float | bool):
        return [torch.tensor(value)]
    raise ArchiveError(f"cannot compare outputs of type {type(value).__name__}")


def compare_outputs(expected: Any, actual: Any, *, atol: float, rtol: float) -> tuple[bool, float, float]:
    """Compare two model outputs elementwise, as ``torch.allclose`` does.

    Returns:
        ``(passed, max_abs_diff, max_rel_diff)``; shapes or dtypes that differ fail with
        an infinite difference.
    """
    exp, act = flatten_outputs(expected), flatten_outputs(actual)
    if len(exp) != len(act):
        return False, math.inf, math.inf
    passed, max_abs, max_rel = True, 0.0, 0.0
    for want, got in zip(exp, act, strict=True):
        e, a = want.detach().cpu(), got.detach().cpu()
        if e.shape != a.shape or e.dtype != a.dtype:
            return False, math.inf, math.inf
        if e.numel() == 0:
            continue
        if not (e.is_floating_point() or e.is_complex()):
            e, a = e.double(), a.double()
        diff = (e - a).abs()
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / e.abs().clamp_min(1e-12)).max()))
        passed = passed and bool(torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True))
    return passed, max_abs, max_rel


def open_artifact(
    client: Any,
    uri: str,
    *,
    map_location: str | torch.device | None = None,
    extra_names: Iterable[str] = (),
    check_compatibility_first: bool = True,
    spool_dir: str | None = None,
) -> tuple[Any, Manifest, dict[str, bytes]]:
    """Load an artifact the way a consumer should: manifest first, compatibility from the
    manifest before downloading, then the archive checked against the manifest's size and
    sha256 while it downloads.

    A TorchScript archive is loaded with ``torch.jit.load``: ``map_location`` goes to it;
    without one, every module is loaded onto the CPU, whatever device it was saved from.
    A ``.pt2`` archive is loaded with ``torch.export.load`` and gives an
    ``ExportedProgram`` (call ``.module()`` to run it); its weights come back on the device
    they were exported from: ``map_location`` may only name that device.

    Returns:
        The module (or program), its manifest, and the requested extra files' bytes.

    Raises:
        ManifestError: no valid manifest for ``uri``.
        ArchiveError: this torch cannot read the archive (with the reason), or its bytes
            differ from the manifest's.
    """
    from .reader import check_compatibility, local_reader, read_manifest_checked

    manifest = read_manifest_checked(client, uri)
    if check_compatibility_first:
        local_torch, max_version = local_reader()
        verdict = check_compatibility(manifest, local_torch=local_torch, max_format_version=max_version)
        if not verdict.ok:
            raise ArchiveError(f"{manifest.artifact.uri}: {verdict.reason}")
    if manifest.artifact.format == "pt2":
        # torch.export.load has no map_location: the weights go back where they were exported.
        if map_location is not None and torch.device(map_location) != torch.device(manifest.producer.device):
            raise ValueError(
                f"map_location {map_location!r}: a .pt2 loads on the device it was exported on "
                f"({manifest.producer.device}); torch.export.load cannot move it"
            )
        from .pt2 import load_pt2_artifact

        program, stored = load_pt2_artifact(
            client,
            manifest.artifact.uri,
            sha256=manifest.artifact.sha256,
            size=manifest.artifact.size,
            spool_dir=spool_dir,
        )
        return program, manifest, {name: stored.get(name, b"") for name in extra_names}
    module, extras = load_artifact(
        client,
        manifest.artifact.uri,
        map_location=map_location,
        extra_names=extra_names,
        sha256=manifest.artifact.sha256,
        size=manifest.artifact.size,
        spool_dir=spool_dir,
    )
    return module, manifest, extras
