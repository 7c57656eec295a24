"""Hostile archives and extra files: archives whose extra-file names would steer a consumer
outside its target (:data:`SLIP_NAMES`), with their manifests, and exports under a small
extra-file size limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import zipfile
from datetime import UTC, datetime
from typing import Any

from serializer.manifest.model import manifest_uri_for
from worker.spec import parse_spec

LIMIT = 1024


def _run_with_limit(s3: Any, bucket: str, extra_files: dict[str, Any], limit: int = LIMIT) -> dict[str, Any]:
    from worker.export import run_export
    from worker.settings import Settings

    settings = Settings(max_extra_file_bytes=limit, allowed_builders=("tests.fixtures",))
    spec = parse_spec(
        {
            "name": "limited",
            "builder": "tests.fixtures:tiny_linear",
            "destination": f"s3://{bucket}/limited",
            "extra_files": extra_files,
        }
    )
    return run_export(spec, settings=settings, client=s3)


def _put(s3: Any, bucket: str, key: str, data: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


#: Extra-file names a hostile archive may carry (as ``archive/extra/<name>`` records).
SLIP_NAMES = ["../../evil.txt", "/etc/evil.txt", "a/../../../evil.txt", "..\\..\\evil.txt", "C:/evil.txt"]


def _archive(names: list[str]) -> bytes:
    """A stored (uncompressed) zip laid out like a TorchScript archive, with these extra names."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"not a real model")
        archive.writestr("archive/extra/ok.txt", b"fine")
        for name in names:
            archive.writestr(f"archive/extra/{name}", f"payload of {name}".encode())
    return buf.getvalue()


def _manifest_json(uri: str, data: bytes) -> bytes:
    """A manifest, as plain JSON, listing every extra record of ``data`` as it is stored."""
    entries = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.filename.startswith("archive/extra/"):
                body = archive.read(info)
                # The data follows the 30-byte local header, its name and its extra field.
                lengths = data[info.header_offset + 26 : info.header_offset + 30]
                offset = (
                    info.header_offset
                    + 30
                    + int.from_bytes(lengths[:2], "little")
                    + int.from_bytes(lengths[2:], "little")
                )
                assert data[offset : offset + len(body)] == body
                entries.append(
                    {
                        "name": info.filename.removeprefix("archive/extra/"),
                        "size": len(body),
                        "sha256": hashlib.sha256(body).hexdigest(),
                        "offset": offset,
                    }
                )
    manifest = {
        "schema_version": 2,
        "artifact": {
            "uri": uri,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "format": "torchscript",
            "format_version": 1,
            "archive_root": "archive",
            "etag": "",
        },
        "spec": {},
        "spec_hash": "0" * 64,
        "extra_files": entries,
        "producer": {"torch": "0", "python": "0", "export_worker": "0", "device": "cpu", "host": "h", "builder": None},
        "created_at": datetime.now(UTC).isoformat(),
        "verification": None,
        "metadata": {},
    }
    return json.dumps(manifest, sort_keys=True).encode()


def _store(s3: Any, bucket: str, prefix: str, names: list[str]) -> tuple[str, bytes]:
    """Store an archive with these extra names and its manifest; the archive's URI and the manifest."""
    data = _archive(names)
    uri = f"s3://{bucket}/{prefix}/model.pt"
    manifest = _manifest_json(uri, data)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/model.pt", Body=data)
    s3.put_object(Bucket=bucket, Key=manifest_uri_for(uri).split("/", 3)[3], Body=manifest)
    return uri, manifest


def _tree(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))
