"""A manifest listing an unsafe extra-file name is refused when read."""

from __future__ import annotations

import pytest

from serializer.manifest.model import Manifest
from tests.hostile_archives import SLIP_NAMES, _archive, _manifest_json


@pytest.mark.parametrize("name", SLIP_NAMES)
def test_manifest_from_json_refuses_unsafe_extra_names(name: str) -> None:
    from serializer.errors import ManifestError

    manifest = _manifest_json("s3://bucket/hostile/model.pt", _archive([name]))
    with pytest.raises(ManifestError, match="extra_files"):
        Manifest.from_json(manifest)
