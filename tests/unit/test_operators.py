"""The operator allow-list's decisions (serializer/operators.py), the TorchScript code and
pickle checks on hand-written records, the ``.pt2`` target and graph checks on hand-written
JSON, and the linear float check."""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest

from serializer import operators
from serializer.errors import ArchiveError
from serializer.operators import (
    DENIED_OPERATORS,
    custom_class_refusal,
    higher_order_refusal,
    operator_refusal,
    qualified_refusal,
)
from serializer.pt2.program import check_guard, check_program_operators, check_sym_expr, float_text, target_refusal
from serializer.torchscript.check import _Refused, check_code, check_pickle

# -- decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qualified",
    [
        "aten::linear",
        "aten::_convolution",
        "aten::__is__",
        "prim::RaiseException",
        "quantized::linear_dynamic",
        "_quantized::wrapped_fbgemm_linear_fp16_weight",
        "quantized_decomposed::quantize_per_tensor",
        "mkldnn_prepacked::conv2d_run",
        "profiler::_record_function_enter_new",
        "torchvision::nms",
    ],
)
def test_operators_plain_models_use_are_allowed(qualified: str) -> None:
    assert qualified_refusal(qualified) is None


@pytest.mark.parametrize(
    ("qualified", "reason"),
    [
        ("aten::from_file", "file access"),
        ("aten::save", "file access"),
        ("prim::rpc_async", "network access"),
        ("prim::rpc_sync", "network access"),
        ("prim::rpc_remote", "network access"),
        ("c10d::allreduce_", "namespace 'c10d' is not allowed"),
        ("_c10d_functional::all_reduce", "namespace '_c10d_functional' is not allowed"),
        ("debugprims::load_tensor", "namespace 'debugprims' is not allowed"),
        ("image::read_file", "namespace 'image' is not allowed"),
        ("torchaudio::sox_io_load_audio_file", "namespace 'torchaudio' is not allowed"),
        ("acme::anything", "namespace 'acme' is not allowed"),
        ("higher_order::cond", "namespace 'higher_order' is not allowed"),
        ("aten::__class__", "not an operator name"),
        ("aten::from-file", "not an operator name"),
        ("aten", "not an operator name"),
    ],
)
def test_refused_operators_name_their_reason(qualified: str, reason: str) -> None:
    assert qualified_refusal(qualified) == reason


def test_every_denied_operator_is_in_an_allowed_namespace() -> None:
    # Otherwise its entry is dead: the namespace alone refuses it.
    for qualified in DENIED_OPERATORS:
        namespace, _, name = qualified.partition("::")
        assert namespace in operators.ALLOWED_NAMESPACES
        assert operator_refusal(namespace, name) == DENIED_OPERATORS[qualified]


def test_the_deny_list_covers_every_operator_torch_offers_that_takes_a_file_name() -> None:
    # How the list was found, rerun against the installed torch: every schema in an allowed
    # namespace with a str argument named like a file, a path or an address is denied.
    import torch

    pattern = re.compile(r"file|path|dir|url|addr|host|socket", re.IGNORECASE)
    found = {
        schema.name
        for schema in torch._C._jit_get_all_schemas()
        if schema.name.partition("::")[0] in operators.ALLOWED_NAMESPACES
        and any("str" in str(arg.type) and pattern.search(arg.name) for arg in schema.arguments)
    }
    assert found <= set(DENIED_OPERATORS), sorted(found - set(DENIED_OPERATORS))
    assert {"aten::from_file", "aten::save"} <= found


def test_custom_classes() -> None:
    assert custom_class_refusal("quantized", "LinearPackedParamsBase") is None
    assert custom_class_refusal("rnn", "CellParamsBase") is None
    for namespace, name in [("c10d", "ProcessGroup"), ("dist_rpc", "WorkerInfo"), ("aten", "OpaqueObject"), ("x", "Y")]:
        assert custom_class_refusal(namespace, name) is not None


def test_higher_order_operators() -> None:
    for name in ("cond", "while_loop", "map_impl", "auto_functionalized", "with_effects"):
        assert higher_order_refusal(name) is None
    for name in ("triton_kernel_wrapper_mutation", "inline_asm_elementwise", "call_torchbind", "invoke_leaf_function"):
        assert higher_order_refusal(name) is not None


# -- TorchScript code ------------------------------------------------------------------------

_METHOD = "class M(Module):\n  def __setstate__(self: __torch__.M,\n    state: Tuple[Tensor, str]) -> NoneType:\n"


def _code(*lines: str) -> bytes:
    return (_METHOD + "".join(f"    {line}\n" for line in lines) + "    return None\n").encode()


@pytest.mark.parametrize(
    ("line", "refusal"),
    [
        ('f = torch.from_file("/x.pth", True, 6, dtype=0)', "calls aten::from_file (file access)"),
        ("_0 = torch.autograd.from_file((state)[1], True, 6)", "calls aten::from_file (file access)"),
        ("_0 = ops.aten.from_file((state)[1], True, 6)", "calls aten::from_file (file access)"),
        ("_0 = torch.ops.aten.save((state)[0], (state)[1])", "calls aten::save (file access)"),
        ("_0 = ops.image.read_file((state)[1])", "calls image::read_file (namespace 'image' is not allowed)"),
        ("_0 = ops.prim.rpc_async((state)[1], CONSTANTS.c0)", "calls prim::rpc_async (network access)"),
        ("_0 = rpc_sync((state)[1], CONSTANTS.c0)", "calls prim::rpc_sync (network access)"),
        ("_0 = rpc_async((state)[1], CONSTANTS.c0)\n    rpc_async = 1", "calls prim::rpc_async (network access)"),
        # An alias: torch's importer compiles it, and the call maps the file.
        ("_ff = torch.from_file\n    _0 = _ff((state)[1], True, 6)", "calls aten::from_file (file access)"),
        # A method call: TorchScript resolves it to the operator of that name on the string.
        ("_0 = ((state)[1]).from_file(True, 6)", "calls aten::from_file (file access)"),
        ("_0 = (state)[0].save((state)[1])", "calls aten::save (file access)"),
        # A reference, not a call: bound, it can be called later or forked.
        ("_0 = torch.from_file", "calls aten::from_file (file access)"),
        ("_0 = fork(torch.save, (state)[0], (state)[1])", "calls aten::save (file access)"),
        ('_0 = getattr((state)[1], "from_file")', "calls aten::from_file (file access)"),
        ("_0 = getattr(state, (state)[1])", "calls getattr without a literal attribute name"),
        ('_0 = getattr(ops, "image")', "refers to 'ops' itself"),
        ("_0 = torch", "refers to 'torch' itself"),
        ("_0 = torch.nn.functional.relu((state)[0])", "names torch.nn.functional.relu, which is not an operator"),
        ("_0 = ops.image.io.read((state)[1])", "names ops.image.io.read, which is not an operator"),
        ("_0 = __torch__.torch.classes.c10d.ProcessGroup(0, 1)", "uses torch.classes.c10d.ProcessGroup"),
        ("_0 = __torch__.torch.classes.c10d", "names __torch__.torch.classes.c10d, which is not a custom class"),
    ],
)
def test_code_naming_a_refused_operator_is_refused(line: str, refusal: str) -> None:
    with pytest.raises(_Refused) as info:
        check_code(_code(line))
    assert refusal in str(info.value)


@pytest.mark.parametrize(
    "line",
    [
        "_0 = torch.linear((state)[0], (state)[0], None)",
        "_0 = ops.quantized.linear_dynamic((state)[0], CONSTANTS.c0)",
        "_0 = torch.__isnot__(state, None)",
        '_0 = ops.prim.RaiseException(CONSTANTS.c0, "builtins.RuntimeError")',
        # Strings and comments are not code (the lexical check makes sure TorchScript agrees).
        '_0 = "torch.from_file(\\"/x.pth\\", True, 6)"  # torch.save(x, p)',
        # The model's own names: a local variable, a compiled function, a class attribute.
        "save = torch.add((state)[0], 1)\n    _0 = torch.mul(save, 2)",
        "_0 = __torch__.helpers.save((state)[0])",
        "_0 = __torch__.torch.classes.quantized.LinearPackedParamsBase",
        "_0 = uninitialized(Tensor)\n    _1 = unchecked_cast(Tensor, _0)\n    _2 = annotate(List[int], [])",
        '_0 = getattr(self, "0")',
        "_0 = torch.clamp((state)[0], -inf, inf)",
    ],
)
def test_code_of_plain_models_passes(line: str) -> None:
    check_code(_code(line))


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"class M(Module):\n  def f(self\n", "does not parse"),
        (b"x = (" * 300 + b"1" + b")" * 300, "does not parse"),
        (b"x = r'\\' + torch.from_file('/x')\n", "a string literal torch does not write"),
        (b'x = """\ntorch.from_file("/x")\n"""\n', "a string literal torch does not write"),
        (b"x = b'abc'\n", "a string literal torch does not write"),
        (b"x = 1 + \\\n  2\n", "a backslash"),
        (b"x = 1\r\ny = torch.from_file('/x')\n", "a carriage return"),
        (b"x = 1\fy = 2\n", "a form feed"),
        ("x = \u0444\n".encode(), "a name that is not ASCII"),
        (b"x = 1\x00\n", "a NUL"),
    ],
)
def test_code_outside_the_plain_subset_torch_writes_is_refused(data: bytes, refusal: str) -> None:
    with pytest.raises(_Refused) as info:
        check_code(data)
    assert refusal in str(info.value)


# -- pickles ---------------------------------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    """A protocol-2 pickle naming ``module.name`` (as torch's pickler writes an object)."""
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00)\x81q\x01."


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("__torch__.torch.nn.modules.linear", "Linear"),
        ("__torch__.torch.classes.quantized", "LinearPackedParamsBase"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch.jit._pickle", "build_intlist"),
        ("collections", "OrderedDict"),
        ("torch", "FloatStorage"),
    ],
)
def test_pickles_torch_writes_pass(module: str, name: str) -> None:
    check_pickle(_global(module, name))


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (_global("__torch__.torch.classes.c10d", "ProcessGroup"), "unpickles torch.classes.c10d.ProcessGroup"),
        (_global("__torch__.torch.classes.aten", "OpaqueObject"), "unpickles torch.classes.aten.OpaqueObject"),
        (_global("__torch__.torch.classes", "quantized"), "which is not a custom class"),
        (_global("os", "system"), "unpickles os.system, which torch's TorchScript pickles never hold"),
        (pickle.dumps(re.compile("x"), protocol=4), "STACK_GLOBAL"),
        (b"not a pickle", "is not a pickle torch writes"),
    ],
)
def test_pickles_naming_other_globals_are_refused(data: bytes, refusal: str) -> None:
    with pytest.raises(_Refused) as info:
        check_pickle(data)
    assert refusal in str(info.value)


# -- .pt2 targets and graphs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten.linear.default",
        "torch.ops.aten.add.Tensor",
        "torch.ops.aten.add",
        "torch.ops.aten.__and__.Tensor",
        "torch.ops.higher_order.cond",
        "torch.ops.quantized_decomposed.quantize_per_tensor.default",
        "_operator.getitem",
        "_operator.floordiv",
        "torch.sym_max",
        "math.trunc",
    ],
)
def test_targets_torch_export_writes_pass(target: str) -> None:
    assert target_refusal(target)[1] is None


@pytest.mark.parametrize(
    ("target", "shown", "reason"),
    [
        ("torch.ops.aten.from_file.default", "aten::from_file", "file access"),
        ("torch.ops.aten.save.default", "aten::save", "file access"),
        ("torch.ops.image.read_file.default", "image::read_file", "namespace 'image' is not allowed"),
        ("torch.ops.aten.linear._op", "aten::linear", "not an operator overload"),
        ("torch.ops.aten.__getattr__.default", "aten::__getattr__", "not an operator name"),
        ("torch.ops.higher_order.inline_asm_elementwise", "torch.ops.higher_order.inline_asm_elementwise",
         "a higher-order operator not on the allow-list"),
        ("torch.ops.higher_order.cond.x", "torch.ops.higher_order.cond", "not a higher-order operator"),
        ("torch.from_file", "torch.from_file", "a Python callable"),
        ("torch.os.system", "torch.os.system", "a Python callable"),
        ("torchvision.os.system", "torchvision.os.system", "a Python callable"),
        ("_operatorx.attrgetter", "_operatorx.attrgetter", "a Python callable"),
        ("builtins.exec", "builtins.exec", "a Python callable"),
        ("#acme:op", "#acme:op", "a Python callable"),
        (7, "a int", "not an operator name"),
    ],
)  # fmt: skip
def test_other_targets_are_refused(target: object, shown: str, reason: str) -> None:
    got_shown, why = target_refusal(target)
    assert got_shown == shown
    assert why is not None and reason in why


def _node(target: str, name: str = "n", *inputs: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "target": target, "inputs": list(inputs), "outputs": [], "metadata": {}}


def _program(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"graph_module": {"graph": {"nodes": list(nodes), "inputs": [], "outputs": []}}}


def test_a_plain_graph_passes() -> None:
    check_program_operators(_program(_node("torch.ops.aten.add.Tensor"), _node("_operator.getitem")))


def test_a_node_of_the_graph_is_refused_by_name() -> None:
    with pytest.raises(ArchiveError, match=r"node 'ff' calls aten::from_file \(file access\)"):
        check_program_operators(_program(_node("torch.ops.aten.add.Tensor"), _node("torch.ops.aten.from_file", "ff")))


def test_sub_graphs_of_higher_order_operators_are_checked() -> None:
    inner = {"nodes": [_node("torch.ops.aten.save.default", "inner")], "inputs": [], "outputs": []}
    branch = {"name": "true_graph_0", "arg": {"as_graph": {"name": "true_graph_0", "graph": inner}}, "kind": 1}
    with pytest.raises(ArchiveError, match=r"node 'inner' calls aten::save"):
        check_program_operators(_program(_node("torch.ops.higher_order.cond", "cond", branch)))


def test_operators_passed_as_arguments_are_checked() -> None:
    op = {"name": "_mutable_op", "arg": {"as_operator": "torch.ops.aten.from_file.default"}, "kind": 1}
    with pytest.raises(ArchiveError, match=r"argument names operator aten::from_file"):
        check_program_operators(_program(_node("torch.ops.higher_order.auto_functionalized", "af", op)))


def test_deeply_nested_json_is_walked_without_recursion() -> None:
    deep: Any = _node("torch.ops.aten.from_file.default", "deep")
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ArchiveError, match="node 'deep'"):
        check_program_operators({"graph_module": {"graph": {"nodes": deep}}})


# -- linear checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "-1", "+2.5", "1.", ".5", "2.50e-3", "1E+10", "0.0"])
def test_float_text_accepts_what_srepr_writes(text: str) -> None:
    assert float_text(text)


@pytest.mark.parametrize("text", ["", ".", "-", "1e", "1e+", "1.2.3", "1x", " 1", "e5", "--1", "\u0661"])
def test_float_text_refuses_anything_else(text: str) -> None:
    assert not float_text(text)


MIB = 1024**2


def test_float_text_of_a_mebibyte_of_digits_is_decided_in_one_pass() -> None:
    # The regular expression this replaced backtracked quadratically: 16 KiB of digits that
    # do not end like a float took ~4 s, this would have taken hours.  One pass now.
    assert not float_text("9" * MIB + "x")
    assert float_text("9" * MIB)
    assert not float_text("." + "9" * MIB + "e")


def test_a_symbolic_float_just_under_the_length_limit_is_refused_at_once() -> None:
    # ~60 KiB of digits in a Float: before, about a minute in the regular expression.
    text = "Float('" + "9" * 60_000 + "x', precision=53)"
    with pytest.raises(ArchiveError, match="the string"):
        check_sym_expr(text)


@pytest.mark.parametrize(
    "text",
    ["-" * 60_000 + "1", "not " * 16_000 + "1", "1+" * 30_000 + "1", "Add(" * 300 + "1" + ")" * 300, "1+" * 1500 + "1"],
    ids=["unary", "not", "binop", "calls", "binop-1500"],
)
@pytest.mark.parametrize("check", [check_sym_expr, check_guard], ids=["expression", "guard"])
def test_deeply_nested_expressions_are_refused_as_archive_errors(text: str, check: Any) -> None:
    # Python's parser gives up with MemoryError or RecursionError; the walk over what it
    # parsed would reach the recursion limit: each is a refusal, not a crash.
    with pytest.raises(ArchiveError):
        check(text)


def test_a_mebibyte_expression_is_refused_by_its_length() -> None:
    with pytest.raises(ArchiveError, match="at most"):
        check_sym_expr("Integer(" + "9" * MIB + ")")


def test_a_guard_taking_the_max_or_min_of_sizes_passes_and_other_calls_do_not() -> None:
    """torch writes ``max(...)`` in the guards of a dimension derived from a dynamic one."""
    check_guard("max(2, L['x'].size()[0] // 2) <= L['x'].size()[0]")
    check_guard("min(L['x'].size()[0], L['y'].size()[1]) >= 1")
    for hostile in (
        "max(__import__('os').system('id'), 1) > 0",
        "max(L['x'].size()[0], key=print) > 0",
        "max(L['x']) > 0",
        "sorted(L['x'].size()[0], 1) > 0",
    ):
        with pytest.raises(ArchiveError):
            check_guard(hostile)
