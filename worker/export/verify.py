"""Checking a stored archive against the eager module it was made from."""

from __future__ import annotations

from typing import Any

import torch

from serializer.archive.info import ArchiveInfo
from serializer.consumer.compare import compare_outputs
from serializer.manifest.model import Verification
from serializer.pt2.load import load_pt2_artifact, program_device
from serializer.pt2.pytree import foreign_types
from serializer.s3.client import S3Client
from serializer.torchscript.load import load_artifact

from ..builders import ExampleInputs
from ..errors import VerificationFailed
from ..settings import Settings
from ..spec import ExportSpec
from .capture import Built
from .progress import Progress, Stage
from .record import to_cpu


def verify_archive(
    client: S3Client,
    info: ArchiveInfo,
    inputs: ExampleInputs | tuple[Any, ...],
    reference: Any,
    *,
    atol: float,
    rtol: float,
    spool_dir: str | None = None,
) -> Verification:
    """Reload the stored archive (checking its sha256 as it downloads) and compare its
    outputs with the eager module's.  A TorchScript archive is loaded on the CPU; a ``.pt2``
    with ``torch.export.load``, its weights on the device they were exported from.  The
    download goes to a temporary file in ``spool_dir``.

    Raises:
        VerificationFailed: a ``.pt2`` whose inputs or outputs use container types that a
            consumer with only torch cannot load (it loads here, where they are registered).
    """
    examples = inputs if isinstance(inputs, ExampleInputs) else ExampleInputs(args=tuple(inputs))
    if info.format == "pt2":
        program, _ = load_pt2_artifact(client, info.uri, sha256=info.sha256, size=info.size, spool_dir=spool_dir)
        foreign = foreign_types(program)
        if foreign:
            raise VerificationFailed(
                f"the stored program's inputs or outputs use {', '.join(foreign)}, registered by a library this "
                "worker imports: a consumer with only torch cannot load it"
            )
        on_device = examples.to(program_device(program))
        with torch.no_grad():
            actual = program.module()(*on_device.args, **on_device.kwargs)
    else:
        loaded, _ = load_artifact(
            client, info.uri, map_location="cpu", sha256=info.sha256, size=info.size, spool_dir=spool_dir
        )
        on_cpu = examples.to("cpu")
        with torch.no_grad():
            actual = loaded(*on_cpu.args, **on_cpu.kwargs)
    passed, max_abs, max_rel = compare_outputs(to_cpu(reference), actual, atol=atol, rtol=rtol)
    return Verification(
        passed=passed,
        max_abs_diff=min(max_abs, 1e300),
        max_rel_diff=min(max_rel, 1e300),
        atol=atol,
        rtol=rtol,
    )


def verify_upload(
    spec: ExportSpec, settings: Settings, client: S3Client, info: ArchiveInfo, built: Built, report: Progress
) -> Verification | None:
    """Verify the uploaded archive where the spec asks for it; None where it does not.

    Raises:
        VerificationFailed: the outputs differ and ``EXPORT_VERIFY_MISMATCH`` is ``fail``.
    """
    if not spec.should_verify:
        return None
    report(Stage.VERIFYING, {"bytes": info.size})
    verification = verify_archive(
        client, info, built.inputs, built.reference, atol=spec.atol, rtol=spec.rtol, spool_dir=settings.spool_dir
    )
    if not verification.passed and settings.verify_mismatch == "fail":
        raise VerificationFailed(
            f"reloaded archive differs from the eager module: max abs diff {verification.max_abs_diff:g}, "
            f"max rel diff {verification.max_rel_diff:g} (atol {spec.atol:g}, rtol {spec.rtol:g})"
        )
    return verification
