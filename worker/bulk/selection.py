"""The candidates of a bulk re-export: selections streamed from S3 or from disk.

A selection is either every manifest under an ``s3://bucket/prefix`` (paging through the
listing) or a catalog of specs (JSON Lines or YAML, on S3 or on disk).  Each candidate is a
spec with where it was found (and the manifest it was read from), or the reason it cannot
be read.  Everything here streams: memory stays flat whatever the selection's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from serializer.errors import InvalidURI, ManifestError
from serializer.manifest.model import MANIFEST_SUFFIX, Manifest
from serializer.manifest.store import read_manifest
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri

from ..errors import SpecError
from ..settings import JSONL_SUFFIXES, YAML_SUFFIXES
from ..spec import ExportSpec, parse_spec


@dataclass(frozen=True)
class Candidate:
    """One spec of a selection: where it was found, and the manifest it was read from."""

    source: str
    spec: ExportSpec | None = None
    manifest_uri: str | None = None
    manifest: Manifest | None = None
    error: str | None = None
    given_name: str | None = None

    @property
    def name(self) -> str:
        """The spec's name, as far as it is known."""
        if self.spec is not None:
            return self.spec.name
        if self.manifest is not None:
            return str(self.manifest.spec.get("name", "?"))
        return self.given_name or "?"


def is_catalog(source: str) -> bool:
    """Whether ``source`` names a catalog file rather than an ``s3://`` prefix of manifests."""
    return not source.endswith("/") and source.lower().endswith(JSONL_SUFFIXES + YAML_SUFFIXES)


def check_source(source: str) -> str:
    """Validate a selection: an ``s3://bucket[/prefix]``, or a catalog path or URI.  A
    trailing ``/`` always means a prefix (a folder may be named like a catalog).

    Raises:
        SpecError: naming what is wrong.
    """
    try:
        if is_catalog(source):
            if source.startswith("s3://"):
                parse_s3_uri(source)
            return source
        if not source.startswith("s3://"):
            kinds = ", ".join(JSONL_SUFFIXES + YAML_SUFFIXES)
            raise SpecError(f"selection {source!r} is neither an s3://bucket/prefix nor a catalog ({kinds})")
        parse_s3_uri(source, require_key=False)
    except InvalidURI as exc:
        raise SpecError(f"selection {source!r}: {exc}") from exc
    # Kept with its trailing "/" where the name would read as a catalog.
    stripped = source.rstrip("/")
    return source if is_catalog(stripped) else stripped


def list_manifests(client: S3Client, prefix_uri: str, *, start_after: str | None = None) -> Iterator[str]:
    """URIs of every manifest under ``s3://bucket/prefix``, paging through the listing.

    One page is held at a time: a page's keys are taken and the page dropped before the
    next is asked for, so memory does not depend on the listing's length.
    """
    prefix = parse_s3_uri(prefix_uri, require_key=False)
    # A prefix names a folder: s3://b/models lists models/..., not models2/...
    key = prefix.key if not prefix.key or prefix.key.endswith("/") else prefix.key + "/"
    kwargs: dict[str, Any] = {"Bucket": prefix.bucket, "Prefix": key}
    if start_after:
        kwargs["StartAfter"] = start_after
    while True:
        page = client.list_objects_v2(**kwargs)
        keys = [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(MANIFEST_SUFFIX)]
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        del page
        for manifest_key in keys:
            yield f"s3://{prefix.bucket}/{manifest_key}"
        del keys
        if not token:
            return
        kwargs["ContinuationToken"] = token


def iter_candidates(client: S3Client, source: str) -> Iterator[Candidate]:
    """Every candidate of a selection, in order, one at a time."""
    if not is_catalog(source):
        for uri in list_manifests(client, source):
            yield _from_manifest(client, uri)
    elif source.lower().endswith(JSONL_SUFFIXES):
        for number, line in enumerate(_catalog_lines(client, source), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{source}:{number}"
            try:
                data = json.loads(text)
            except ValueError as exc:
                yield Candidate(source=where, error=f"{where}: not JSON: {exc}")
                continue
            yield _from_data(where, data)
    else:
        yield from _yaml_candidates(client, source)


def _from_manifest(client: S3Client, uri: str) -> Candidate:
    try:
        manifest = read_manifest(client, uri)
    except ManifestError as exc:
        return Candidate(source=uri, manifest_uri=uri, error=str(exc))
    try:
        spec = parse_spec(manifest.spec)
    except SpecError as exc:
        return Candidate(source=uri, manifest_uri=uri, manifest=manifest, error=f"recorded spec: {exc}")
    return Candidate(source=uri, spec=spec, manifest_uri=uri, manifest=manifest)


def _from_data(where: str, data: Any) -> Candidate:
    try:
        return Candidate(source=where, spec=parse_spec(data))
    except SpecError as exc:
        name = data.get("name") if isinstance(data, dict) else None
        return Candidate(source=where, error=f"{where}: {exc}", given_name=name if isinstance(name, str) else None)


def _catalog_lines(client: S3Client, source: str) -> Iterator[str]:
    try:
        if source.startswith("s3://"):
            target = parse_s3_uri(source)
            body = client.get_object(Bucket=target.bucket, Key=target.key)["Body"]
            for raw in body.iter_lines(keepends=True):
                yield raw.decode("utf-8")
        else:
            with Path(source).open(encoding="utf-8") as f:
                yield from f
    except ClientError as exc:
        raise SpecError(f"catalog {source} cannot be read ({error_code(exc) or exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"catalog {source} cannot be read: {exc}") from exc


def _yaml_candidates(client: S3Client, source: str) -> Iterator[Candidate]:
    """A YAML catalog: a list of specs, or one spec per document.  Parsed whole (YAML has no
    line-by-line form); JSON Lines is the format for very large catalogs."""
    text = "".join(_catalog_lines(client, source))
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise SpecError(f"catalog {source} is not valid YAML: {exc}") from exc
    number = 0
    for doc in documents:
        for data in doc if isinstance(doc, list) else [doc] if doc is not None else []:
            number += 1
            yield _from_data(f"{source}#{number}", data)
