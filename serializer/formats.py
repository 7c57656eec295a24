"""The archive formats, named once: what specs, manifests, keys and the CLI spell."""

from __future__ import annotations

from typing import Literal, get_args

#: An archive format: ``torchscript`` (``torch.jit.save``) or ``pt2`` (``torch.export.save``).
Format = Literal["torchscript", "pt2"]
#: Every format, the default first.
FORMATS: tuple[Format, ...] = get_args(Format)
#: The format a spec or manifest that names none has.
DEFAULT_FORMAT: Format = "torchscript"
#: Suffix of a TorchScript artifact's key, replaced by the manifest's suffix to name the manifest.
ARTIFACT_SUFFIX = ".pt"
#: Suffix of a ``.pt2`` artifact's key.
PT2_SUFFIX = ".pt2"
#: Artifact suffix of each format.
ARTIFACT_SUFFIXES: dict[Format, str] = {"torchscript": ARTIFACT_SUFFIX, "pt2": PT2_SUFFIX}
