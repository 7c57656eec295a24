"""Checking the strings in a ``.pt2``'s program JSON that torch 2.13 evaluates as code.

``torch.export.load`` parses symbolic shapes with ``sympy.sympify`` (which runs the string
through Python's ``eval``), and ``ExportedProgram.module()`` turns each ``guards_code``
string into the body of a Python function it runs on every call.  A crafted
``models/model.json`` can therefore run any code.  Before torch sees a program, every such
string must parse (with :mod:`ast`, nothing evaluated) to the small language torch itself
writes there:

- a symbolic expression is sympy's ``srepr`` form: calls of sympy and torch shape
  functions (``Add(Symbol('s0', positive=True, integer=True), Integer(2))``) over numbers,
  with a string only as a symbol's name or a float's digits;
- a guard is a comparison over ``L['input'].size()[0]``-like terms, numbers and boolean
  operators.

Anything else is refused by name.  :func:`check_program_operators` checks what the graph
calls: every node's target, in every graph and sub-graph, and every operator passed as an
argument, against :mod:`serializer.operators`.

Every check is linear in its input: no regular expression that backtracks, no recursion
over the JSON.  Imports nothing from torch.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any

from ..errors import ArchiveError
from ..operators import ALLOWED_PYTHON_TARGETS, higher_order_refusal, operator_refusal

#: Callables a symbolic expression may use: sympy's ``srepr`` names for numbers, symbols,
#: arithmetic, relations and logic, and torch's shape functions
#: (``torch.utils._sympy.functions``, as the deserializer names them).
SYMPY_CALLS = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
        "floor", "ceiling", "Eq", "Ne", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan",
        "GreaterThan", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "ExprCondPair", "Tuple",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
        "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
        "ToFloat", "Identity",
    }
)  # fmt: skip
#: Bare names an expression may use (sympy's constants).
SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false"})
#: Keyword arguments (symbol assumptions, a float's precision) and where strings may stand.
SYMPY_KEYWORDS = frozenset(
    {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero",
     "commutative", "odd", "even", "precision", "evaluate"}
)  # fmt: skip
_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: Methods a guard may call on an input (no arguments but integers).
GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
#: Builtins a guard may call on guard terms: torch writes ``max(...)`` for a dimension
#: derived from a dynamic one (``reshape(n // 2, -1)``).
GUARD_FUNCTIONS = frozenset({"max", "min"})
#: Longest string checked; longer ones are refused (torch writes short ones).
MAX_EXPRESSION = 64 * 1024


class _Refused(Exception):
    pass


#: A run of ASCII digits: one character class, matched once from a given position (no
#: alternative to backtrack into), so linear.
_DIGIT_RUN = re.compile(r"[0-9]*")


def _digits(text: str, start: int) -> int:
    """Where the run of ASCII digits starting at ``start`` ends."""
    match = _DIGIT_RUN.match(text, start)
    return match.end() if match else start


def float_text(text: str) -> bool:
    """Whether ``text`` is a float's digits as sympy's ``srepr`` writes them: an optional
    sign, digits with at most one point (``1.``, ``.5``, ``2.50``), an optional exponent.

    One pass over the text (it replaces a regular expression whose nested repetition took
    seconds to refuse 16 KiB of digits).
    """
    pos = 1 if text[:1] in ("-", "+") else 0
    end = _digits(text, pos)
    whole = end - pos
    if end < len(text) and text[end] == ".":
        after = _digits(text, end + 1)
        if whole == 0 and after == end + 1:
            return False
        end = after
    elif whole == 0:
        return False
    if end < len(text) and text[end] in ("e", "E"):
        exponent = end + 1 + (1 if text[end + 1 : end + 2] in ("-", "+") else 0)
        end = _digits(text, exponent)
        if end == exponent:
            return False
    return end == len(text)


def _number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _sympy_node(node: ast.AST) -> None:
    if _number(node) or (isinstance(node, ast.Constant) and type(node.value) is bool):
        return
    if isinstance(node, ast.Name):
        if node.id not in SYMPY_NAMES:
            raise _Refused(f"name {node.id!r}")
        return
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise _Refused(f"a {type(node).__name__}")
    name = node.func.id
    if name not in SYMPY_CALLS:
        raise _Refused(f"a call of {name!r}")
    for keyword in node.keywords:
        value = keyword.value
        if keyword.arg not in SYMPY_KEYWORDS or not (
            _number(value) or (isinstance(value, ast.Constant) and type(value.value) is bool)
        ):
            raise _Refused(f"keyword {keyword.arg!r}")
    for position, arg in enumerate(node.args):
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            # sympy would parse (eval) any other string: only a symbol's name or a float's digits.
            text = arg.value
            if not (
                position == 0
                and ((name == "Symbol" and _SYMBOL_NAME.fullmatch(text)) or (name == "Float" and float_text(text)))
            ):
                raise _Refused(f"the string {text[:40]!r} in {name}")
            continue
        _sympy_node(arg)


def _guard_node(node: ast.AST) -> None:
    if _number(node) or (isinstance(node, ast.Constant) and type(node.value) is bool):
        return
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _guard_node(value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
        _guard_node(node.operand)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.FloorDiv | ast.Mod):
        _guard_node(node.left)
        _guard_node(node.right)
    elif isinstance(node, ast.Compare) and all(
        isinstance(op, ast.Eq | ast.NotEq | ast.Lt | ast.LtE | ast.Gt | ast.GtE) for op in node.ops
    ):
        for part in (node.left, *node.comparators):
            _guard_node(part)
    elif isinstance(node, ast.Name) and node.id == "L":
        return
    elif isinstance(node, ast.Subscript):
        key = node.slice
        if not (isinstance(key, ast.Constant) and type(key.value) in (int, str)):
            raise _Refused("a subscript that is not a constant")
        _guard_node(node.value)
    elif isinstance(node, ast.Call):
        _guard_call(node)
    else:
        raise _Refused(f"a {type(node).__name__}")


def _guard_call(node: ast.Call) -> None:
    """An input's shape method with integer arguments, or ``max``/``min`` of guard terms."""
    if node.keywords:
        raise _Refused("a call with keywords")
    if isinstance(node.func, ast.Attribute) and node.func.attr in GUARD_METHODS:
        if not all(_number(arg) for arg in node.args):
            raise _Refused(f"{node.func.attr}() of something other than integers")
        _guard_node(node.func.value)
    elif isinstance(node.func, ast.Name) and node.func.id in GUARD_FUNCTIONS and len(node.args) >= 2:
        for arg in node.args:
            _guard_node(arg)
    else:
        raise _Refused("a Call")


def _parse(text: object, what: str) -> ast.AST:
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION:
        raise _Refused(f"{what} is not a string of at most {MAX_EXPRESSION} characters")
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise _Refused(f"{what} does not parse ({exc.msg})") from None
    except (MemoryError, RecursionError, ValueError):
        # Python's parser gives up on deep nesting ("-" * 60000) with these.
        raise _Refused(f"{what} is nested too deeply") from None


def check_sym_expr(text: object) -> None:
    """Check one ``expr_str`` of a program.

    Raises:
        ArchiveError: it is not sympy's plain ``srepr`` of a shape expression.
    """
    try:
        _sympy_node(_parse(text, "a symbolic expression"))
    except RecursionError:
        raise ArchiveError(f"symbolic expression {str(text)[:80]!r}: nested too deeply") from None
    except _Refused as exc:
        raise ArchiveError(f"symbolic expression {str(text)[:80]!r}: {exc} is not allowed there") from None


def check_guard(text: object) -> None:
    """Check one ``guards_code`` entry of a program.

    Raises:
        ArchiveError: it is not a comparison over input sizes.
    """
    try:
        _guard_node(_parse(text, "a guard"))
    except RecursionError:
        raise ArchiveError(f"guard {str(text)[:80]!r}: nested too deeply") from None
    except _Refused as exc:
        raise ArchiveError(f"guard {str(text)[:80]!r}: {exc} is not allowed there") from None


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield key, child
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def check_program_json(program: Any) -> None:
    """Check every string torch would evaluate in a deserialized program's JSON: each
    ``expr_str`` (symbolic shapes) and each ``guards_code`` entry.

    Raises:
        ArchiveError: naming the first string that is refused.
    """
    for key, value in _walk(program):
        if key == "expr_str":
            check_sym_expr(value)
        elif key == "guards_code":
            if not isinstance(value, list):
                raise ArchiveError("guards_code is not a list")
            for guard in value:
                check_guard(guard)


#: An operator overload's name (``default``, ``Tensor``, ``out``); a leading underscore
#: would name a Python attribute of the operator packet instead.
_OVERLOAD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")


def target_refusal(target: object) -> tuple[str, str | None]:
    """The operator a node's ``target`` (or an ``as_operator`` argument) names, as the
    deserializer resolves it, and why it is refused (None where it is allowed).

    ``torch.ops.NS.OP[.OVERLOAD]`` is operator ``NS::OP``; ``torch.ops.higher_order.NAME`` a
    higher-order operator; the Python callables of :data:`ALLOWED_PYTHON_TARGETS` are
    allowed by exact name.  Anything else (``torch.from_file``, ``torch.os.system``, an
    extension's ``#ns:op``) is refused: torch would resolve it as an attribute path and call
    whatever it finds.
    """
    if not isinstance(target, str):
        return f"a {type(target).__name__}", "not an operator name"
    shown = target[:80]
    if target in ALLOWED_PYTHON_TARGETS:
        return shown, None
    parts = target.split(".")
    if len(parts) not in (4, 5) or parts[:2] != ["torch", "ops"]:
        return shown, "a Python callable that is not an operator on the allow-list"
    namespace, name = parts[2], parts[3]
    if namespace == "higher_order":
        why = higher_order_refusal(name) if len(parts) == 4 else "not a higher-order operator"
        return f"torch.ops.higher_order.{name}"[:80], why
    qualified = f"{namespace}::{name}"[:80]
    if len(parts) == 5 and not _OVERLOAD.fullmatch(parts[4]):
        return qualified, "not an operator overload"
    return qualified, operator_refusal(namespace, name)


def check_program_operators(program: Any) -> None:
    """Check everything a deserialized program's graphs call: the target of every node of
    every graph (sub-graphs of higher-order operators included, wherever they are nested)
    and every operator passed as an argument (``as_operator``: the operator that
    ``auto_functionalized`` or ``with_effects`` runs).

    One walk over the JSON, with a stack: linear in its size, whatever its depth.

    Raises:
        ArchiveError: naming the first node and what it calls, and why that is refused.
    """
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            # Any dict with a target is taken for a node: one without inputs or outputs
            # is checked too, whatever torch would make of it.
            if "target" in item:
                shown, why = target_refusal(item["target"])
                if why is not None:
                    node = item.get("name")
                    where = f"node {str(node)[:80]!r}" if isinstance(node, str) and node else "a node"
                    raise ArchiveError(f"{where} calls {shown} ({why})")
            if "as_operator" in item:
                shown, why = target_refusal(item["as_operator"])
                if why is not None:
                    raise ArchiveError(f"an argument names operator {shown} ({why})")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
