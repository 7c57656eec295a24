"""Exporting a hostile program: a ``.pt2`` whose weights are tensor subclasses is refused
before anything is written to S3 (in-process moto)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from serializer.errors import ArchiveError
from serializer.pt2.export import export_pt2


def test_a_program_with_tensor_subclass_weights_is_refused_before_anything_is_written(s3: Any, bucket: str) -> None:
    from torch.testing._internal.two_tensor import TwoTensor

    class Sub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(TwoTensor(torch.ones(3), torch.ones(3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = x * self.weight
            return out

    program = torch.export.export(Sub(), (torch.ones(3),))
    with pytest.raises(ArchiveError, match=r"pickles \(weight"):
        export_pt2(program, f"s3://{bucket}/m/model.pt2", client=s3)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
