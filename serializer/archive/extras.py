"""Extra files carried inside an archive: name rules and contents."""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidExtraFile

#: Longest extra-file name, in UTF-8 bytes (a common file-system limit for one name).
MAX_NAME_BYTES = 255
#: Name of the manifest stored next to each artifact; an extra file may not take it.
MANIFEST_NAME = "manifest.json"
#: Folder of the export's own build record inside the archive's extra files (spec and
#: producer, example inputs, reference outputs); spec extra files may not use it.
BUILD_RECORD_DIR = "export_worker"
BUILD_JSON = f"{BUILD_RECORD_DIR}/build.json"
EXAMPLE_INPUTS = f"{BUILD_RECORD_DIR}/example_inputs.pt"
REFERENCE_OUTPUTS = f"{BUILD_RECORD_DIR}/reference_outputs.pt"
#: The same two, base64 text, in ``.pt2`` archives (whose extra files are text only).
EXAMPLE_INPUTS_TEXT = EXAMPLE_INPUTS + ".b64"
REFERENCE_OUTPUTS_TEXT = REFERENCE_OUTPUTS + ".b64"
#: Names the service writes into archives itself.
RESERVED_NAMES = frozenset({MANIFEST_NAME})
#: Unicode categories refused in names: controls, format characters (bidi overrides,
#: zero-width joiners) and line/paragraph separators, which make names that look alike.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


@dataclass(frozen=True)
class ExtraFileInfo:
    """An extra file as stored: name, size and sha256 of its bytes, and where they start in the zip."""

    name: str
    size: int
    sha256: str
    offset: int


#: ``C:`` and the like: an absolute path on Windows, whatever follows.
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def validate_extra_name(name: str) -> str:
    """Check an extra file's name and return it.

    A name is a relative POSIX path: no ``..`` or ``.`` segment, no leading ``/``, no empty
    segment, no backslash, no control or invisible characters, NFC-normalized, at most
    255 bytes, and not a reserved name.

    Raises:
        InvalidExtraFile: naming the rule the name breaks.
    """
    if not isinstance(name, str) or not name:
        raise InvalidExtraFile(f"extra file name must be a non-empty string, got {name!r}")
    bad = next((c for c in name if unicodedata.category(c) in _BAD_CATEGORIES), None)
    if bad is not None:
        raise InvalidExtraFile(f"extra file name {name!r} contains the character U+{ord(bad):04X}")
    if unicodedata.normalize("NFC", name) != name:
        raise InvalidExtraFile(f"extra file name {name!r} is not NFC-normalized Unicode")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidExtraFile(f"extra file name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("/"):
        raise InvalidExtraFile(f"extra file name {name!r} is absolute; use a relative path")
    if _DRIVE_RE.match(name):
        raise InvalidExtraFile(f"extra file name {name!r} starts with a drive letter; use a relative path")
    if "\\" in name:
        raise InvalidExtraFile(f"extra file name {name!r} contains a backslash; use '/' between segments")
    segments = name.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidExtraFile(f"extra file name {name!r} has an empty, '.' or '..' segment")
    if name in RESERVED_NAMES:
        raise InvalidExtraFile(f"extra file name {name!r} is reserved by export-worker")
    return name


def normalize_extra_files(files: Mapping[str, bytes | str] | None) -> dict[str, bytes]:
    """Validate every name and turn text contents into UTF-8 bytes.

    Raises:
        InvalidExtraFile: a bad name, contents that are neither bytes nor text, or text
            that is not valid Unicode (lone surrogates).
    """
    out: dict[str, bytes] = {}
    for name, content in (files or {}).items():
        validate_extra_name(name)
        if isinstance(content, str):
            try:
                out[name] = content.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates, e.g. from a JSON "\ud800" escape
                raise InvalidExtraFile(f"extra file {name!r}: text is not valid Unicode ({exc.reason})") from exc
        elif isinstance(content, bytes | bytearray | memoryview):
            out[name] = bytes(content)
        else:
            raise InvalidExtraFile(f"extra file {name!r}: contents must be bytes or text, got {type(content).__name__}")
    return out


def decode_base64(name: str, text: str) -> bytes:
    """Decode an extra file given as base64, strictly.

    Raises:
        InvalidExtraFile: the text is not valid base64.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InvalidExtraFile(f"extra file {name!r}: invalid base64 ({exc})") from exc
    # b64decode(validate=True) still takes surplus padding ("YWJj=") and non-zero trailing
    # bits ("YR=="); only the canonical encoding of the bytes is accepted.
    canonical = base64.b64encode(data)
    if canonical != (text.encode("ascii") if isinstance(text, str) else bytes(text)):
        raise InvalidExtraFile(f"extra file {name!r}: invalid base64 (not canonical: wrong padding or trailing bits)")
    return data


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
