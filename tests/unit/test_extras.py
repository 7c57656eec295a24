"""Extra files: the naming rules, text and bytes contents, and strict base64."""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from typing import Any

import pytest

from serializer.archive.extras import (
    MANIFEST_NAME,
    MAX_NAME_BYTES,
    decode_base64,
    normalize_extra_files,
    sha256_hex,
    validate_extra_name,
)
from serializer.errors import InvalidExtraFile
from tests.fixtures import ALL_BYTES

# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a.txt",
        "a",
        "dir/sub/x.bin",
        "héllo.txt",
        "日本語/ファイル.json",
        "emoji-😀.txt",
        "with space.txt",
        ".hidden",
        "a..b",
        "...",
        "dir/manifest.json",
        "x" * MAX_NAME_BYTES,
        "é" * 127 + "x",  # 255 bytes of UTF-8
    ],
)
def test_accepts_normal_names(name: str) -> None:
    assert unicodedata.is_normalized("NFC", name)
    assert validate_extra_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "non-empty"),
        ("/abs", "absolute"),
        ("/", "absolute"),
        ("../x", "segment"),
        ("a/../b", "segment"),
        ("a/..", "segment"),
        ("a//b", "segment"),
        ("./a", "segment"),
        ("a/./b", "segment"),
        ("dir/", "segment"),
        (".", "segment"),
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("a\x00b", "U\\+0000"),
        ("line\n", "U\\+000A"),
        ("tab\there", "U\\+0009"),
        ("del\x7f", "U\\+007F"),
        ("evil\u202etxt.exe", "U\\+202E"),  # right-to-left override
        ("zero\u200dwidth", "U\\+200D"),  # zero-width joiner
        ("zero\u200bspace", "U\\+200B"),
        ("\ufeffbom", "U\\+FEFF"),
        ("line\u2028sep", "U\\+2028"),
        ("private\ue000", "U\\+E000"),
        ("unassigned\u0378", "U\\+0378"),
        ("surrogate\ud800", "U\\+D800"),
        ("he\u0301llo.txt", "NFC"),  # e + combining acute: decomposed
        ("x" * (MAX_NAME_BYTES + 1), "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),  # 128 characters, 256 bytes
        (MANIFEST_NAME, "reserved"),
    ],
    ids=repr,
)
def test_rejects_bad_names(name: str, rule: str) -> None:
    with pytest.raises(InvalidExtraFile, match=rule):
        validate_extra_name(name)


@pytest.mark.parametrize("name", [None, 1, b"a.txt", ["a"], Ellipsis], ids=repr)
def test_rejects_names_that_are_not_strings(name: Any) -> None:
    with pytest.raises(InvalidExtraFile, match="non-empty string"):
        validate_extra_name(name)


def test_invalid_extra_file_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_extra_name("../x")


def test_nfc_and_decomposed_forms_of_one_name() -> None:
    composed = "h\u00e9llo.txt"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert validate_extra_name(composed) == composed
    with pytest.raises(InvalidExtraFile, match="NFC"):
        validate_extra_name(decomposed)


# -- contents -----------------------------------------------------------------------------


def test_normalize_turns_text_into_utf8_and_keeps_bytes() -> None:
    files: dict[str, Any] = {
        "text.txt": "héllo wörld\n",
        "empty.txt": "",
        "all.bin": ALL_BYTES,
        "array.bin": bytearray(b"\x00\xff"),
        "view.bin": memoryview(b"abc"),
    }
    out = normalize_extra_files(files)
    assert out == {
        "text.txt": "héllo wörld\n".encode(),
        "empty.txt": b"",
        "all.bin": ALL_BYTES,
        "array.bin": b"\x00\xff",
        "view.bin": b"abc",
    }
    assert all(type(v) is bytes for v in out.values())
    assert list(out) == list(files)  # order kept


def test_normalize_of_nothing() -> None:
    assert normalize_extra_files(None) == {}
    assert normalize_extra_files({}) == {}


def test_normalize_copies_mutable_contents() -> None:
    content = bytearray(b"before")
    files: dict[str, Any] = {"a.bin": content}
    out = normalize_extra_files(files)
    content[:] = b"after!"
    assert out["a.bin"] == b"before"


@pytest.mark.parametrize("content", [None, 1, 1.5, ["a"], {"a": 1}, object()], ids=lambda c: type(c).__name__)
def test_normalize_rejects_other_contents(content: Any) -> None:
    with pytest.raises(InvalidExtraFile, match=r"'bad\.bin': contents must be bytes or text"):
        normalize_extra_files({"ok.txt": "fine", "bad.bin": content})


def test_normalize_rejects_a_bad_name() -> None:
    with pytest.raises(InvalidExtraFile, match="segment"):
        normalize_extra_files({"ok.txt": "fine", "../escape": b"x"})


def test_normalize_refuses_text_that_is_not_unicode() -> None:
    # A lone surrogate (json.loads gives one for a "\ud800" escape) cannot be UTF-8.
    text = json.loads('"ab\\ud800"')
    with pytest.raises(InvalidExtraFile, match=r"'a\.txt': text is not valid Unicode"):
        normalize_extra_files({"a.txt": text})


# -- base64 -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", ALL_BYTES, bytes(1000)], ids=len)
def test_decode_base64_round_trips(data: bytes) -> None:
    assert decode_base64("f.bin", base64.b64encode(data).decode()) == data


@pytest.mark.parametrize(
    "text",
    [
        "YQ",  # missing padding
        "YWJj=",  # surplus padding
        "YR==",  # non-zero trailing bits
        "YW Jj",  # space
        "YWJj\n",  # newline
        "YW\nJj",
        "-_-_",  # URL-safe alphabet
        "YQ==YQ==",  # data after padding
        "====",
        "not base64!",
        "é",
    ],
    ids=repr,
)
def test_decode_base64_is_strict(text: str) -> None:
    with pytest.raises(InvalidExtraFile, match=r"extra file 'f\.bin': invalid base64"):
        decode_base64("f.bin", text)


def test_sha256_hex() -> None:
    assert sha256_hex(ALL_BYTES) == hashlib.sha256(ALL_BYTES).hexdigest()
