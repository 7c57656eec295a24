"""Refuse a TorchScript archive whose code calls operators off the allow-list, before
``torch.jit.load`` sees it.

``torch.jit.load`` compiles every ``code/**/*.py`` record it needs and runs code while it
loads: each module's and class's ``__setstate__`` (TorchScript from ``code/``), and the C++
``__setstate__`` of every custom class (``torch.classes.NS.Class``) that ``data.pkl``
names.  TorchScript can call any registered operator (``torch.from_file(...)`` is
``aten::from_file``; ``ops.NS.X(...)`` is ``NS::X``), so a bucket writer can make a
consumer map, create and write a file just by loading an archive.

:func:`check_torchscript_archive` reads the archive with torch's own zip reader (the one
``torch.jit.load`` uses, shown the same records as Python's ``zipfile``), requires the
records a ``torch.jit.save`` archive holds and nothing else, and parses every code record
with :mod:`ast` (nothing is evaluated).  Every operator the code names, as a call or a
reference, is decided by :mod:`serializer.operators`; every custom class the code or a
pickle names must be on its allow-list.  Hardening, not a sandbox: see
``docs/reliability.md`` for what it does not cover.
"""

from __future__ import annotations

import ast
import io
import pickletools
import re
import struct
import tokenize
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ArchiveError
from ..operators import DENIED_NAMES, DENIED_OPERATORS, custom_class_refusal, operator_refusal

#: Largest code record checked, and all code records together (torch writes a few KiB to
#: a few MiB of code for the largest models); larger ones are refused.
MAX_CODE_RECORD = 16 * 1024**2
MAX_CODE_TOTAL = 128 * 1024**2
#: Largest pickle record checked (``data.pkl`` of a model of 100,000 tensors is ~10 MiB),
#: and all pickles together.
MAX_PICKLE_RECORD = 128 * 1024**2
MAX_PICKLE_TOTAL = 512 * 1024**2

#: Records a ``torch.jit.save`` archive holds besides its code, storages and extra files.
_PLAIN_RECORDS = frozenset(
    {
        "data.pkl",
        "constants.pkl",
        "version",
        ".data/version",
        "byteorder",
        ".data/serialization_id",
        "traced_inputs.pkl",
    }
)
#: Tensor storages (``data/0``), constant tensors and a traced module's inputs.
_STORAGE = re.compile(r"(?:data|constants|traced_inputs)/[0-9]{1,12}")
#: A code record: ``code/__torch__/torch/nn/modules/linear.py`` and its debug pickle.
_CODE = re.compile(r"code/[A-Za-z0-9_]{1,256}(?:/[A-Za-z0-9_]{1,256}){0,64}\.py")
_DEBUG = re.compile(r"code/[A-Za-z0-9_]{1,256}(?:/[A-Za-z0-9_]{1,256}){0,64}\.py\.debug_pkl")

#: Modules the globals of torch's TorchScript pickles come from (besides ``__torch__``,
#: the classes compiled from ``code/``): tensor and storage rebuilders, ``build_intlist``
#: and friends, quantization schemes, ``OrderedDict``.  torch's own unpickler accepts no
#: other Python global; these are refused here too.
_PICKLE_MODULES = frozenset({"torch", "torch._utils", "torch.jit._pickle", "collections"})
_CUSTOM_CLASSES = "__torch__.torch.classes."

#: Builtins of TorchScript that take an operator or an attribute by name.
_GETATTR = frozenset({"getattr", "hasattr"})
#: Denied operators TorchScript also offers as global builtins (``rpc_async(...)``).
_BUILTIN_FORMS = frozenset({"rpc_async", "rpc_sync", "rpc_remote"})


class _Refused(Exception):
    pass


def check_torchscript_archive(path: str, *, source: str | None = None) -> None:
    """Refuse a TorchScript archive unless its records are those ``torch.jit.save`` writes
    and every operator and custom class its code and pickles name is allowed.

    Raises:
        ArchiveError: naming the archive, the record and what it calls, e.g.
            ``refused: code/__torch__.py calls aten::from_file (file access)``.
    """
    where = source or path
    try:
        reader, records = _read_records(path, where)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ArchiveError(f"{where}: not a readable TorchScript archive: {exc}") from exc
    odd = sorted(
        name
        for name in records
        if name not in _PLAIN_RECORDS
        and not _STORAGE.fullmatch(name)
        and not _CODE.fullmatch(name)
        and not _DEBUG.fullmatch(name)
        and not (name.startswith("extra/") and len(name) > len("extra/"))
    )
    if odd:
        raise ArchiveError(
            f"{where}: refused: records that a torch.jit.save archive does not hold ({', '.join(odd[:3])})"
        )
    code_total = pickle_total = 0
    for name in sorted(records):
        is_code = bool(_CODE.fullmatch(name))
        # torch unpickles its own records; an extra file named ``*.pkl`` is the model's data.
        is_pickle = not name.startswith("extra/") and name.endswith((".pkl", ".debug_pkl"))
        if not is_code and not is_pickle:
            continue
        size = reader.get_record_size(name)
        limit, total = (MAX_CODE_RECORD, MAX_CODE_TOTAL) if is_code else (MAX_PICKLE_RECORD, MAX_PICKLE_TOTAL)
        code_total += size if is_code else 0
        pickle_total += size if is_pickle else 0
        if size > limit or (code_total if is_code else pickle_total) > total:
            raise ArchiveError(f"{where}: refused: {name} is too large to check ({size} bytes)")
        try:
            data = bytes(reader.get_record(name))
        except RuntimeError as exc:
            raise ArchiveError(f"{where}: not a readable TorchScript archive: {name}: {exc}") from exc
        try:
            if is_code:
                check_code(data)
            else:
                check_pickle(data)
        except _Refused as exc:
            raise ArchiveError(f"{where}: refused: {name} {exc}") from None


def _read_records(path: str, where: str) -> tuple[Any, set[str]]:
    """torch's reader of the zip and the records it sees (below the root), once Python's
    ``zipfile`` was shown the same records under one root, none named twice."""
    with zipfile.ZipFile(path) as zf:
        names = [info.filename for info in zf.infolist()]
    if len(set(names)) != len(names):
        raise ArchiveError(f"{where}: refused: the zip names a record twice")
    roots = {name.partition("/")[0] for name in names}
    if len(roots) != 1:
        raise ArchiveError(f"{where}: refused: records under {len(roots)} root folders")
    listed = {name.partition("/")[2] for name in names}
    reader = torch._C.PyTorchFileReader(path)
    seen = set(reader.get_all_records())
    if seen != listed:
        differ = sorted(seen ^ listed)[:3]
        raise ArchiveError(f"{where}: refused: torch's reader and Python's see different records ({', '.join(differ)})")
    return reader, seen


# -- code ------------------------------------------------------------------------------------


def check_code(data: bytes) -> None:
    """Check one ``code/**/*.py`` record.

    Raises:
        _Refused: its text is not the plain source torch writes, or it names an operator
            or custom class that is not allowed (the message says which).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("is not UTF-8 text") from None
    _check_lexical_subset(text)
    try:
        tree = ast.parse(text, mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise _Refused(f"does not parse as TorchScript source ({type(exc).__name__})") from None
    _check_tree(tree)


def _check_lexical_subset(text: str) -> None:
    """The text is in the plain subset torch's printer writes, where Python's tokenizer and
    TorchScript's lexer agree on what is code and what is a string or a comment: strings
    without prefixes or triple quotes, ASCII names, no line continuations, no carriage
    returns, form feeds or NULs."""
    for char, what in (("\r", "a carriage return"), ("\f", "a form feed"), ("\0", "a NUL"), ("\\\n", "a backslash")):
        if char in text:
            raise _Refused(f"holds {what} outside the source torch writes")
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.STRING:
                quote = token.string[:1]
                if quote not in ("'", '"') or token.string.startswith((quote * 3,)):
                    raise _Refused(f"holds a string literal torch does not write (line {token.start[0]})")
            elif token.type == tokenize.NAME and not token.string.isascii():
                raise _Refused(f"holds a name that is not ASCII (line {token.start[0]})")
            elif token.type == tokenize.ERRORTOKEN:
                raise _Refused(f"does not parse as TorchScript source (line {token.start[0]})")
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise _Refused(f"does not parse as TorchScript source ({type(exc).__name__})") from None


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]`` when the chain starts at a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _denied(name: str) -> str:
    qualified = next(q for q in DENIED_OPERATORS if q.endswith(f"::{name}"))
    return f"calls {qualified} ({DENIED_OPERATORS[qualified]})"


def _operator(parts: list[str]) -> tuple[str, str] | None:
    """The operator a ``torch.*`` / ``ops.*`` chain names, as TorchScript's importer
    resolves it (``torch.X`` and ``torch.autograd.X`` are ``aten::X``, ``ops.NS.X`` is
    ``NS::X``), or None for a chain of another shape."""
    if parts[0] == "torch":
        rest = parts[1:]
        if len(rest) == 1:
            return "aten", rest[0]
        if len(rest) == 2 and rest[0] == "autograd":
            return "aten", rest[1]
        if len(rest) == 3 and rest[0] == "ops":
            return rest[1], rest[2]
        return None
    if len(parts) == 3:
        return parts[1], parts[2]
    return None


def _check_chain(parts: list[str]) -> None:
    root = parts[0]
    if root in ("torch", "ops"):
        op = _operator(parts)
        if op is None:
            raise _Refused(f"names {'.'.join(parts)}, which is not an operator of a known form")
        why = operator_refusal(*op)
        if why is not None:
            raise _Refused(f"calls {op[0]}::{op[1]} ({why})")
    elif root == "__torch__" and parts[1:3] == ["torch", "classes"]:
        if len(parts) != 5:
            raise _Refused(f"names {'.'.join(parts)}, which is not a custom class")
        why = custom_class_refusal(parts[3], parts[4])
        if why is not None:
            raise _Refused(f"uses torch.classes.{parts[3]}.{parts[4]} ({why})")


def _parents(tree: ast.AST) -> Iterator[tuple[ast.AST, ast.AST | None]]:
    """Every node with its parent, breadth first, without recursion."""
    queue: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    while queue:
        node, parent = queue.pop()
        yield node, parent
        queue.extend((child, node) for child in ast.iter_child_nodes(node))


def _check_tree(tree: ast.AST) -> None:
    nodes = list(_parents(tree))
    bound = {node.id for node, _ in nodes if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)}
    bound |= {node.arg for node, _ in nodes if isinstance(node, ast.arg)}
    for node, parent in nodes:
        if isinstance(node, ast.Attribute):
            parts = _dotted(node)
            outermost = not (isinstance(parent, ast.Attribute) and parent.value is node)
            if parts is not None and outermost:
                _check_chain(parts)
            if node.attr in DENIED_NAMES and (parts is None or parts[0] != "__torch__"):
                # A method call: TorchScript resolves ``(x).from_file(...)`` to the
                # operator of that name, ``x`` its first argument.
                raise _Refused(_denied(node.attr))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in ("torch", "ops") and not (isinstance(parent, ast.Attribute) and parent.value is node):
                raise _Refused(f"refers to {node.id!r} itself, not to an operator of it")
            # A bare name: the rpc builtins are TorchScript globals, refused even where the
            # record binds the name elsewhere (the global answers before the binding runs);
            # an operator name is refused unless the record binds it (a local ``save``).
            if node.id in _BUILTIN_FORMS or (node.id in DENIED_NAMES and node.id not in bound):
                raise _Refused(_denied(node.id))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _GETATTR:
            if len(node.args) < 2 or not (
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
            ):
                raise _Refused(f"calls {node.func.id} without a literal attribute name")
            if node.args[1].value in DENIED_NAMES:
                raise _Refused(_denied(node.args[1].value))


# -- pickles ---------------------------------------------------------------------------------


def check_pickle(data: bytes) -> None:
    """Check the globals one of the archive's pickles names (read opcode by opcode by
    :func:`pickletools.genops`; nothing is unpickled).

    Raises:
        _Refused: a custom class off the allow-list, a global torch's TorchScript pickles
            never hold, or not a pickle.
    """
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "STACK_GLOBAL":
                raise _Refused("uses STACK_GLOBAL, which torch's TorchScript pickles never hold")
            if opcode.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                _check_global(module, name)
    except (ValueError, EOFError, UnicodeDecodeError, struct.error) as exc:
        raise _Refused(f"is not a pickle torch writes ({exc})") from None


def _check_global(module: str, name: str) -> None:
    if module.startswith(_CUSTOM_CLASSES):
        namespace = module[len(_CUSTOM_CLASSES) :]
        why = custom_class_refusal(namespace, name) if "." not in namespace else "not a custom class"
        if why is not None:
            raise _Refused(f"unpickles torch.classes.{namespace}.{name} ({why})")
    elif module == "__torch__" or module.startswith("__torch__."):
        if module == "__torch__.torch.classes":
            raise _Refused(f"unpickles {module}.{name}, which is not a custom class")
    elif module not in _PICKLE_MODULES:
        raise _Refused(f"unpickles {module}.{name}, which torch's TorchScript pickles never hold")
