"""What every ``exportctl`` command shares: the two consoles, the one-line error, and text
from outside (manifests, archives, specs, S3 keys, task results, exceptions) made safe to print.

Outside text is printed as text, never as rich markup: a manifest's ``[bold red]x[/]`` or
``[link=...]`` shows as typed.  Characters that a terminal would act on or that change how a
line reads are shown as escapes: C0 and C1 controls and DEL (``\\x1b``, ``\\r``, ``\\n``),
format characters such as the bidi overrides (``\\u202e``), line and paragraph separators,
lone surrogates and unassigned code points.  A backslash is doubled, so an escape seen on
screen always stands for the character, never for the four characters typed by someone.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.text import Text

__all__ = [
    "CommandError",
    "aligned_lines",
    "console",
    "json_safe",
    "out",
    "pretty_json",
    "print_error",
    "safe_text",
    "stdout_is_terminal",
    "text",
    "write_lines",
]

#: Progress, status lines and errors (stderr), so that stdout stays for results.
console = Console(stderr=True, highlight=False, soft_wrap=True)
#: Results (stdout): tables, manifests, task ids.
out = Console(highlight=False, soft_wrap=True)

#: Unicode categories shown as escapes: controls (C0, DEL, C1), format characters (bidi
#: overrides and isolates, zero-width joiners, the BOM), surrogates, unassigned code points,
#: and the line and paragraph separators, which some terminals and editors break lines at.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
#: The short escapes Python and C readers know; other characters get ``\xNN``/``\uNNNN``.
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Columns of :func:`aligned_lines` are separated by this many spaces.
COLUMN_GAP = 2


class CommandError(Exception):
    """Raised for an expected failure the CLI reports as one line with a non-zero exit."""


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def _escape_char(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(value: object) -> str:
    """``str(value)`` with every control, format or separator character, and the backslash,
    shown as an escape (``\\x1b``, ``\\u202e``, ``\\\\``); other characters, non-ASCII
    letters included, are kept.  Rich markup is not touched: print the result as text
    (:func:`text`, ``markup=False``), as :func:`print_error` does."""
    raw = str(value)
    if raw.isprintable() and "\\" not in raw:  # no control, format or separator character
        return raw
    return "".join(_escape_char(c) if c == "\\" or _unsafe(c) else c for c in raw)


def text(value: object, style: str = "") -> Text:
    """Outside text as a rich :class:`~rich.text.Text`: escaped by :func:`safe_text`, never
    read as markup, in ``style``."""
    return Text(safe_text(value), style=style)


def print_error(exc: BaseException) -> None:
    """The CLI's one error line on stderr: ``error: MESSAGE``, the message as safe text."""
    console.print(Text.assemble(("error:", "red"), " ", text(exc)))


def json_safe(json_text: str) -> str:
    """JSON text with each character :func:`safe_text` would escape written as a JSON
    ``\\uNNNN`` escape (a surrogate pair above U+FFFF): the same JSON value, still valid,
    and nothing in it a terminal acts on.  Non-ASCII letters are kept as they are.

    Tab, newline and carriage return are left alone: ``json.dumps`` already escapes them
    inside strings, so outside strings they are only the text's own indentation.
    """

    def escape_json(char: str) -> str:
        code = ord(char)
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

    if json_text.isprintable():
        return json_text
    return "".join(escape_json(c) if c not in "\t\n\r" and _unsafe(c) else c for c in json_text)


def pretty_json(json_text: str) -> Text:
    """JSON text indented and highlighted for a terminal, as :class:`rich.json.JSON` draws it,
    with the characters of :func:`json_safe` escaped (rich's own keeps them raw)."""
    body = json.dumps(json.loads(json_text), indent=2, sort_keys=True, ensure_ascii=False)
    drawn = JSONHighlighter()(Text(json_safe(body)))
    drawn.no_wrap = True
    drawn.overflow = None
    return drawn


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (a person reading) rather than a pipe or a file.

    Asked of the stream itself, not of :data:`out`'s ``is_terminal``, which also answers
    yes where ``FORCE_COLOR`` or ``TTY_COMPATIBLE=1`` is set (as CI systems often do): a
    piped listing must get its plain lines then too.
    """
    isatty = getattr(out.file, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def aligned_lines(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Plain lines for scripts and pagers: the header, then one line per row, each cell
    padded with spaces to its column's width (in terminal cells) and separated by
    :data:`COLUMN_GAP` spaces; nothing is cut or wrapped, whatever the width.

    Each cell is :func:`safe_text`, so a line holds no newline or control character; an
    empty cell is shown as ``-``, so every line has a value in every column.  The last
    column is not padded (no trailing spaces).
    """
    table = [[safe_text(cell) or "-" for cell in row] for row in [header, *rows]]
    widths = [max(cell_len(row[i]) for row in table) for i in range(len(header))]
    gap = " " * COLUMN_GAP
    lines = []
    for row in table:
        padded = [cell + " " * (width - cell_len(cell)) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append(gap.join([*padded, row[-1]]))
    return lines


def write_lines(lines: Iterable[str]) -> None:
    """``lines`` to stdout as they are, each ended by a newline (no rich, no wrapping)."""
    for line in lines:
        sys.stdout.write(line + "\n")
