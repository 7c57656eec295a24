"""Zip-slip: a hostile archive in S3 (in-process moto) cannot steer a consumer outside its
target by an extra file's name; real exports hold only safe names.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest

from serializer.errors import SerializerError
from serializer.manifest.model import Manifest, manifest_uri_for
from tests.hostile_archives import SLIP_NAMES, _run_with_limit


def test_a_safe_name_reads_back_with_and_without_the_manifest(s3: Any, safe: tuple[str, bytes]) -> None:
    from serializer.consumer.extras import read_extra_file

    uri, manifest = safe
    assert read_extra_file(s3, uri, "ok.txt", manifest=Manifest.from_json(manifest)) == b"fine"
    assert read_extra_file(s3, uri, "ok.txt") == b"fine"


@pytest.mark.usefixtures("empty_cwd")
@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "zip-directory"])
@pytest.mark.parametrize("name", SLIP_NAMES)
def test_read_extra_file_refuses_unsafe_names(
    s3: Any, hostile: tuple[str, bytes], name: str, with_manifest: bool
) -> None:
    from serializer.consumer.extras import read_extra_file

    uri, manifest = hostile
    with pytest.raises(SerializerError) as info:
        read_extra_file(s3, uri, name, manifest=Manifest.from_json(manifest) if with_manifest else None)
    assert name in str(info.value) or repr(name) in str(info.value), info.value


def test_exported_archives_hold_only_safe_names(s3: Any, bucket: str) -> None:
    # The producing side: every record of a real export lies under the archive's root and
    # every extra file's name passes the name rules, so extracting it cannot leave a target.
    from serializer.archive.extras import validate_extra_name

    result = _run_with_limit(s3, bucket, {"docs/readme.md": "# hi\n", "labels.txt": "a\nb\n"}, limit=1024**2)
    data = s3.get_object(Bucket=bucket, Key=result["artifact_uri"].split("/", 3)[3])["Body"].read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    root = names[0].split("/", 1)[0]
    for name in names:
        assert name.startswith(f"{root}/") and validate_extra_name(name) == name
    raw = s3.get_object(Bucket=bucket, Key=manifest_uri_for(result["artifact_uri"]).split("/", 3)[3])["Body"].read()
    for entry in Manifest.from_json(raw).extra_files:
        assert validate_extra_name(entry.name) == entry.name
