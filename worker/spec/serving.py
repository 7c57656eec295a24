"""The spec's ``triton`` option: a Triton model repository in S3 the export is published to."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from serializer.s3.uri import parse_s3_uri

from .base import Strict

#: What a Triton model's name may hold: one key segment of the repository.
TRITON_NAME_PATTERN = r"[A-Za-z0-9._-]{1,128}"
TritonName = Annotated[str, StringConstraints(pattern=rf"^{TRITON_NAME_PATTERN}$")]


class TritonTarget(Strict):
    """Where in a Triton model repository an export goes: ``<repository>/<model_name>/<version>/model.pt``
    and ``<repository>/<model_name>/config.pbtxt``."""

    repository: str = Field(description="s3://bucket/prefix of the Triton model repository")
    model_name: TritonName | None = Field(default=None, description="the model's folder; default: the spec's name")
    version: int = Field(ge=1, lt=2**63, description="the version folder; a version is written once")
    max_batch_size: int = Field(
        default=0, ge=0, lt=2**31, description="Triton's batching: dimension 0 of every input and output is the batch"
    )

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        parse_s3_uri(v, require_key=False)
        return v.rstrip("/")

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        if v in (".", ".."):
            raise ValueError(f"model_name {v!r} is not allowed (it names a directory, not a model)")
        return v


def check_triton_target(target: TritonTarget | None, *, fmt: str, has_inputs: bool) -> None:
    """Refuse a ``triton`` option the export cannot honour.

    Raises:
        ValueError: not a TorchScript export (Triton's ``pytorch_libtorch`` backend loads
            TorchScript only), or no example inputs (the config's shapes come from them).
    """
    if target is None:
        return
    if fmt != "torchscript":
        raise ValueError(
            f"triton applies to format 'torchscript': Triton's pytorch_libtorch backend loads TorchScript, "
            f"not {fmt!r} archives"
        )
    if not has_inputs:
        raise ValueError("triton needs example_inputs: the model's config.pbtxt takes its inputs and outputs from them")
