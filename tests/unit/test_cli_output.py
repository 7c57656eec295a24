"""Text from outside printed by ``exportctl``: escaped, never read as markup, never cut."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from worker.cli import output
from worker.cli.consumer import LS_HEADER, ls_line_cells
from worker.cli.output import aligned_lines, json_safe, pretty_json, safe_text, text

#: What a hostile manifest may hold: markup, a colour escape, a carriage return that would
#: overwrite the line, a newline that would forge one, a right-to-left override.
HOSTILE = "[bold red]x[/] \x1b[31mred\rover\nforged \u202eevil"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain name", "plain name"),
        ("é 中文 ü", "é 中文 ü"),
        ("[bold red]x[/]", "[bold red]x[/]"),
        ("\x1b[31m", "\\x1b[31m"),
        ("a\rb", "a\\rb"),
        ("a\nb\tc", "a\\nb\\tc"),
        ("\u202eevil", "\\u202eevil"),
        ("\u2066\u200d\ufeff", "\\u2066\\u200d\\ufeff"),
        ("\x7f\x85\x9b", "\\x7f\\x85\\x9b"),
        ("line\u2028sep", "line\\u2028sep"),
        ("\U000e0001tag", "\\U000e0001tag"),
        ("\ud800", "\\ud800"),
        ("back\\x1b", "back\\\\x1b"),
    ],
)
def test_safe_text_escapes_what_a_terminal_acts_on(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


def test_safe_text_leaves_no_unsafe_character() -> None:
    shown = safe_text(HOSTILE)
    assert shown.isprintable()
    assert shown == "[bold red]x[/] \\x1b[31mred\\rover\\nforged \\u202eevil"


def render(renderable: object, *, terminal: bool) -> str:
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=terminal, width=400, color_system="truecolor" if terminal else None).print(
        renderable
    )
    return buffer.getvalue()


@pytest.mark.parametrize("terminal", [False, True])
def test_text_is_printed_literally(terminal: bool) -> None:
    shown = render(text(HOSTILE), terminal=terminal)
    assert "[bold red]x[/]" in shown, "markup was read"
    assert "\\x1b[31mred\\rover\\nforged \\u202eevil" in shown
    assert "\r" not in shown and "\u202e" not in shown
    if not terminal:
        assert "\x1b" not in shown


def test_print_error_is_one_literal_line(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_error(ValueError(HOSTILE))
    err = capsys.readouterr().err
    assert err == "error: " + safe_text(HOSTILE) + "\n"


def test_json_safe_keeps_the_value_and_escapes_the_characters() -> None:
    value = {"name": HOSTILE + " \x7f\x85 \U000e0001 é", "n": [1, 2]}
    for dumped in (json.dumps(value, ensure_ascii=False), json.dumps(value, ensure_ascii=False, indent=2)):
        safe = json_safe(dumped)
        assert json.loads(safe) == value
        assert safe.replace("\n", "").isprintable(), safe
        assert "\\u202e" in safe and "\\u007f" in safe and "\\u0085" in safe and "\\udb40\\udc01" in safe
        assert "é" in safe, "printable non-ASCII stays readable"
    assert json_safe('{"a":"b"}') == '{"a":"b"}'


def test_pretty_json_escapes_what_rich_json_keeps() -> None:
    shown = render(pretty_json(json.dumps({"name": HOSTILE})), terminal=True)
    assert "\u202e" not in shown and "\r" not in shown
    assert "\\u202eevil" in shown and "[bold red]x[/]" in shown


def test_aligned_lines_pad_to_each_column_and_cut_nothing() -> None:
    long = "s3://bucket/" + "very-long-key/" * 40 + "model.pt"
    lines = aligned_lines(("NAME", "SIZE", "ARTIFACT"), [("a", 1, long), ("中文名", 123456789, "short")])
    assert lines == [
        "NAME    SIZE       ARTIFACT",
        "a       1          " + long,
        "中文名  123456789  short",
    ]


def test_aligned_lines_escape_cells_and_fill_empty_ones() -> None:
    lines = aligned_lines(("A", "B", "C"), [(HOSTILE, "", "end")])
    assert len(lines) == 2
    assert lines[1] == safe_text(HOSTILE) + "  -  end"
    assert lines[0] == "A" + " " * (len(safe_text(HOSTILE)) - 1) + "  B  C"


def test_ls_line_of_a_hostile_manifest_is_one_full_line() -> None:
    row = {
        "name": HOSTILE,
        "artifact_uri": "s3://b/" + "k" * 300 + "\u202e.pt",
        "size": 1234567890123,
        "torch": "2.5.1+cpu\x1b]0;title\x07",
        "format": "torchscript",
        "format_version": 3,
        "created_at": "2025-01-02T03:04:05.678901+00:00",
        "verified": False,
    }
    header, line = aligned_lines(LS_HEADER, [ls_line_cells(row)])
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.startswith(safe_text(HOSTILE) + "  ")
    assert line.endswith("s3://b/" + "k" * 300 + "\\u202e.pt")
    for field in ("1234567890123", "2.5.1+cpu\\x1b]0;title\\x07", "2025-01-02T03:04:05.678901+00:00", " no "):
        assert field in line
    assert [line.index(v) for v in ("torchscript", "1234567890123")] == [
        header.index("FORMAT"),
        header.index("SIZE"),
    ], "columns aligned under the header"
