"""The control of the checkpoint tests: each hostile payload does run when loaded without
``weights_only``.
"""

from __future__ import annotations

import io
import pathlib
import pickle

import torch

from tests.hostile_corpus import CHECKPOINTS, _raw_pickle


def test_checkpoint_payloads_are_live(tmp_path: pathlib.Path) -> None:
    # The control: each payload does run when loaded without weights_only.
    for name, make in CHECKPOINTS.items():
        marker = tmp_path / name
        data = make(marker)
        if make is _raw_pickle:
            pickle.loads(data)
        else:
            torch.load(io.BytesIO(data), weights_only=False)
        assert marker.exists(), name
