"""The candidates of a bulk re-export: selections streamed from S3 or from disk.

A selection is either every manifest under an ``s3://bucket/prefix`` (paging through the
listing) or a catalog of specs (JSON Lines or YAML, on S3 or on disk).  Each candidate is a
spec with where it was found (and the manifest it was read from), or the reason it cannot
be read.  Everything here streams: memory stays flat whatever the selection's size.

What a selection holds is data, not trusted: a manifest is a candidate only where it is
the export of the spec it records, at the keys that spec maps to
(:func:`~worker.keys.manifest_mismatch`); an object that cannot be read or parsed is an
invalid candidate, and the run goes on.  A catalog on disk is read only from inside
``EXPORT_CATALOG_DIR``.  The reasons given for a catalog's bad entries name the line (or
document) and the kind of error, never the file's text: they end up in reports.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from serializer.errors import InvalidURI, ManifestError, SerializerError, SignatureError
from serializer.manifest.model import MANIFEST_SUFFIX, Manifest
from serializer.manifest.store import read_manifest_raw
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri
from serializer.signing.keys import TrustedKeys
from serializer.signing.store import check_signed

from ..errors import SpecError
from ..keys import manifest_mismatch
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


def iter_candidates(
    client: S3Client, source: str, *, catalog_dir: str | None = None, trusted: TrustedKeys | None = None
) -> Iterator[Candidate]:
    """Every candidate of a selection, in order, one at a time.

    Args:
        catalog_dir: the folder a catalog on disk must lie in (``EXPORT_CATALOG_DIR``);
            None refuses catalogs on disk.
        trusted: where given, a listed manifest is used only if one of these keys signed
            it (and its archive's digest); others are invalid candidates.

    Raises:
        SpecError: the catalog cannot be read (or, on disk, lies outside ``catalog_dir``).
    """
    if not is_catalog(source):
        for uri in list_manifests(client, source):
            yield _from_manifest(client, uri, trusted)
    elif source.lower().endswith(JSONL_SUFFIXES):
        for number, line in enumerate(_catalog_lines(client, source, catalog_dir), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{source}:{number}"
            try:
                data = json.loads(text)
            except RecursionError:
                yield Candidate(source=where, error=f"{where}: not JSON: nested too deep")
                continue
            except ValueError as exc:
                # JSONDecodeError's message is the kind of error and its position, no text.
                yield Candidate(source=where, error=f"{where}: not JSON: {exc}")
                continue
            yield _from_data(where, data)
    else:
        yield from _yaml_candidates(client, source, catalog_dir)


def _from_manifest(client: S3Client, uri: str, trusted: TrustedKeys | None = None) -> Candidate:
    """The candidate a listed manifest gives: its spec, where the manifest is that spec's
    export at that spec's keys (and, with ``trusted``, signed by one of them); otherwise
    invalid, with the reason."""
    try:
        manifest, raw = read_manifest_raw(client, uri)
    except (SerializerError, RecursionError) as exc:  # unreadable, too large, not JSON, a key that is no URI
        reason = exc.summary if isinstance(exc, ManifestError) else str(exc)
        return Candidate(source=uri, manifest_uri=uri, error=reason or type(exc).__name__)
    try:
        spec = parse_spec(manifest.spec)
    except SpecError as exc:
        return Candidate(source=uri, manifest_uri=uri, manifest=manifest, error=f"recorded spec: {exc}")
    mismatch = manifest_mismatch(manifest, spec, uri)
    if mismatch is not None:
        return Candidate(source=uri, manifest_uri=uri, given_name=spec.name, error=f"not trusted: {mismatch}")
    if trusted is not None:
        try:
            check_signed(client, uri, manifest, raw, trusted)
        except SignatureError as exc:  # the kind only: the message quotes key ids and keys
            return Candidate(source=uri, manifest_uri=uri, given_name=spec.name, error=f"not trusted: {exc.kind}")
    return Candidate(source=uri, spec=spec, manifest_uri=uri, manifest=manifest)


def _from_data(where: str, data: Any) -> Candidate:
    try:
        return Candidate(source=where, spec=parse_spec(data))
    except SpecError as exc:
        name = data.get("name") if isinstance(data, dict) else None
        return Candidate(source=where, error=f"{where}: {_safe_reason(exc)}", given_name=_plain_name(name))


def _safe_reason(exc: SpecError) -> str:
    """What a report says of a catalog entry that is not a spec: the fields and the kinds of
    error, never a value (the entry is the file's text)."""
    if not exc.problems:
        return "invalid spec"
    return "invalid spec: " + "; ".join(f"{field}: {kind}" for field, kind in exc.problems)


def _plain_name(name: Any) -> str | None:
    """A bad entry's name, where it reads as an export's name (anything else is not shown)."""
    if isinstance(name, str) and 0 < len(name) <= 128 and all(c.isalnum() or c in "._-" for c in name):
        return name
    return None


def check_catalog_path(source: str, catalog_dir: str | None) -> Path:
    """The resolved path of a catalog on disk, which must lie inside ``catalog_dir``
    (symlinks and ``..`` resolved first).

    Raises:
        SpecError: no ``catalog_dir`` is set, or the path lies outside it.
    """
    if not catalog_dir:
        raise SpecError(
            f"catalog {source} is on disk, and catalogs on disk are refused: set EXPORT_CATALOG_DIR "
            "to the folder they are read from, or put the catalog in S3"
        )
    folder = Path(catalog_dir).resolve()
    path = Path(source).resolve()
    if not path.is_relative_to(folder):
        raise SpecError(
            f"catalog {source} lies outside EXPORT_CATALOG_DIR ({folder}); catalogs on disk are read there only"
        )
    return path


def _open_catalog(path: Path) -> int:
    """A descriptor of the regular file at ``path`` (resolved), refusing a link put in its
    place since it was resolved, and anything that is not a regular file (a FIFO, a device)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path} is not a regular file")
    return fd


def _catalog_lines(client: S3Client, source: str, catalog_dir: str | None) -> Iterator[str]:
    number = 0
    try:
        if source.startswith("s3://"):
            target = parse_s3_uri(source)
            body = client.get_object(Bucket=target.bucket, Key=target.key)["Body"]
            for number, raw in enumerate(body.iter_lines(keepends=True), start=1):  # noqa: B007 - named in errors
                yield raw.decode("utf-8")
        else:
            fd = _open_catalog(check_catalog_path(source, catalog_dir))
            with open(fd, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):  # noqa: B007 - named in errors
                    yield line
    except ClientError as exc:
        raise SpecError(f"catalog {source} cannot be read ({error_code(exc) or exc})") from exc
    except UnicodeDecodeError:
        raise SpecError(f"catalog {source} cannot be read: line {number + 1} is not UTF-8") from None
    except OSError as exc:
        raise SpecError(f"catalog {source} cannot be read: {exc.strerror or type(exc).__name__}") from None


def _yaml_candidates(client: S3Client, source: str, catalog_dir: str | None) -> Iterator[Candidate]:
    """A YAML catalog: a list of specs, or one spec per document.  Parsed whole (YAML has no
    line-by-line form); JSON Lines is the format for very large catalogs."""
    text = "".join(_catalog_lines(client, source, catalog_dir))
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise SpecError(f"catalog {source} is not valid YAML: {_yaml_position(exc)}") from None
    except RecursionError:
        raise SpecError(f"catalog {source} is not valid YAML: nested too deep") from None
    number = 0
    for doc in documents:
        for data in doc if isinstance(doc, list) else [doc] if doc is not None else []:
            number += 1
            yield _from_data(f"{source}#{number}", data)


def _yaml_position(exc: yaml.YAMLError) -> str:
    """Where the YAML error is and its kind, without the snippet of text PyYAML quotes."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
    problem = getattr(exc, "problem", None)
    # PyYAML's problems name tokens ("expected ',' or ']'"), or quote one found character.
    kind = problem.split(",")[0] if isinstance(problem, str) and "found" not in problem else type(exc).__name__
    return f"{kind} at {where}"
