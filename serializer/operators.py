"""The operator allow-list both archive formats are checked against before torch loads them.

A TorchScript archive's code and a ``.pt2``'s graph name the operators torch will run:
``aten::linear`` (``torch.linear(...)`` in TorchScript, ``torch.ops.aten.linear.default``
in a ``.pt2``), ``quantized::linear_dynamic``, ``prim::RaiseException``.  The registry is
open: any library loaded into the consumer's process can register a namespace, and some
registered operators reach outside the model: ``aten::from_file`` maps (and, shared,
creates and writes) a file, ``aten::save`` writes one, ``prim::rpc_*`` and the ``c10d``
collectives talk to the network, ``debugprims::load_tensor`` reads a file.

The decision is a small pure function over names (:func:`operator_refusal`): an operator
is allowed when its namespace is one that plain models use (:data:`ALLOWED_NAMESPACES`)
and it is not on the deny-list of operators in those namespaces that touch files, the
network or processes (:data:`DENIED_OPERATORS`).  Every other namespace is refused, known
or not.  TorchScript custom classes (``__torch__.torch.classes.NS.Class``, objects whose
C++ ``__setstate__`` runs at load) and ``.pt2`` higher-order operators have allow-lists of
their own.  Imports nothing, torch included: the lists are data, taken from torch 2.13's
registry as each comment says.

Hardening, not a sandbox: what this does not cover is in ``docs/reliability.md``.
"""

from __future__ import annotations

import re

#: Reasons a refusal names.
FILE = "file access"
NETWORK = "network access"
PROCESS = "process or code loading"

#: Operator namespaces that plain models use.  Found by exporting conv nets, transformers
#: (``nn.TransformerEncoder``, ``nn.MultiheadAttention``), LSTM/GRU, embedding bags and
#: dynamically / statically quantized modules with torch 2.13 in both formats, and by
#: reading each namespace of ``torch._C._jit_get_all_schemas()``:
#:
#: - ``aten``, ``prim``: torch's operators and TorchScript's primitives;
#: - ``prims``, ``rngprims``: torch's decomposition primitives (``.pt2`` graphs);
#: - ``quantized``, ``_quantized``, ``quantized_decomposed``, ``quantization``, ``sparse``:
#:   quantized kernels (eager, FX and PT2E quantization, sparse quantized linear);
#: - ``mkldnn``, ``mkldnn_prepacked``, ``onednn``, ``mkl``, ``prepacked``: CPU kernels that
#:   ``torch.jit.freeze`` / ``optimize_for_inference`` / ``optimize_for_mobile`` and x86
#:   quantization put in a model;
#: - ``profiler``: ``record_function`` ranges in scripted code;
#: - ``torchvision``: its compute operators (``nms``, ``roi_align``, ``deform_conv2d``:
#:   detection models); its file and video readers live in other namespaces (``image``,
#:   ``video_reader``), refused.
#:
#: Refused with the rest: the distributed namespaces (``c10d``, ``_c10d_functional``,
#: ``_c10d_functional_autograd``, ``symm_mem``, ``_dtensor``: network), ``debugprims``
#: (``load_tensor`` reads a file), ``inductor``, ``inductor_prims``, ``static_runtime``,
#: ``onnx``, ``export``, ``_native``, ``_test``, ``debug_mode_ops`` (internal), and every
#: namespace a third-party library registers (``torchaudio``'s file readers among them).
ALLOWED_NAMESPACES = frozenset(
    {
        "aten",
        "prim",
        "prims",
        "rngprims",
        "quantized",
        "_quantized",
        "quantized_decomposed",
        "quantization",
        "sparse",
        "mkldnn",
        "mkldnn_prepacked",
        "onednn",
        "mkl",
        "prepacked",
        "profiler",
        "torchvision",
    }
)

#: Operators of the allowed namespaces that reach outside the model, each with its reason.
#: Found in torch 2.13 by listing every schema of ``torch._C._jit_get_all_schemas()`` and
#: ``torch._C._dispatch_get_all_op_names()`` in those namespaces that takes a ``str``
#: argument (only ``from_file`` and ``save`` take a file name; the rest take modes, reduce
#: names, format strings, ...), and every name matching file / save / load / rpc / socket /
#: exec / env / library / mmap / shm / open / write / read / spawn / system / url / path.
DENIED_OPERATORS: dict[str, str] = {
    # Maps a file as a tensor's storage; with shared=True creates it and writes through.
    "aten::from_file": FILE,
    # torch.save from TorchScript: writes tensors to a file name.
    "aten::save": FILE,
    # torch.distributed.rpc from TorchScript: calls to other processes over the network.
    "prim::rpc_async": NETWORK,
    "prim::rpc_sync": NETWORK,
    "prim::rpc_remote": NETWORK,
}

#: The operator names of :data:`DENIED_OPERATORS`, as a TorchScript method or builtin
#: would spell them (``"path".from_file(...)`` calls ``aten::from_file`` on a string).
DENIED_NAMES = frozenset(name.partition("::")[2] for name in DENIED_OPERATORS)

#: TorchScript custom classes (``torch.classes.NS.Class``) an archive may hold: their C++
#: ``__setstate__`` runs when the archive is loaded.  From
#: ``torch._C._jit_get_custom_class_schemas()`` in torch 2.13: the packed weights of
#: quantized, sparse, mkldnn and xnnpack modules, and the handle of a scripted
#: ``torch.autograd.profiler.record_function`` range.  Refused: ``c10d.*`` and ``dist_rpc.*`` (network),
#: ``_nnapi.*``, ``profiling.*``, ``backendutils.*``, ``aten.OpaqueObject`` and any other.
ALLOWED_CUSTOM_CLASSES = frozenset(
    {
        "quantized.LinearPackedParamsBase",
        "quantized.Conv2dPackedParamsBase",
        "quantized.Conv3dPackedParamsBase",
        "quantized.EmbeddingPackedParamsBase",
        "rnn.CellParamsBase",
        "sparse.LinearPackedParamsBase",
        "mkldnn.ConvOpContext",
        "xnnpack.LinearOpContext",
        "xnnpack.Conv2dOpContext",
        "xnnpack.TransposeConv2dOpContext",
        "profiler._RecordFunction",
    }
)

#: Higher-order operators (``torch.ops.higher_order.NAME``) a ``.pt2`` graph may call: the
#: control flow and wrappers ``torch.export`` writes; their sub-graphs and the operators
#: they take as arguments are checked like the graph's own.  Of torch 2.13's
#: ``torch._ops._higher_order_ops``, refused: those that run code that is not a graph of
#: checked operators (``triton_kernel_wrapper_*``, ``inline_asm_elementwise``,
#: ``aoti_call_delegate``, ``executorch_call_delegate``, ``inductor_compiled_code``,
#: ``invoke_leaf_function``, ``flat_apply``, ``autograd_function_apply``,
#: ``custom_function_call``, ``call_torchbind``, ``dynamo_bypassing_wrapper``) and those
#: that only compilers' internal graphs hold.
ALLOWED_HIGHER_ORDER = frozenset(
    {
        "cond",
        "while_loop",
        "while_loop_stack_output",
        "map_impl",
        "scan",
        "associative_scan",
        "wrap_with_set_grad_enabled",
        "wrap_with_autocast",
        "auto_functionalized",
        "auto_functionalized_v2",
        "with_effects",
        "invoke_subgraph",
        "flex_attention",
        "out_dtype",
        "hints_wrapper",
        "print",
    }
)

#: Python callables a ``.pt2`` node may target besides operators: the names torch 2.13's
#: serializer writes for the symbolic-shape operations (``_SYM_OPS`` in
#: ``torch._export.serde.serialize``) and for ``getitem``.  Any other ``torch.*`` name
#: resolves to whatever that attribute is (``torch.from_file``, ``torch.load``,
#: ``torch.os.system``), so nothing else is allowed.
ALLOWED_PYTHON_TARGETS = frozenset(
    {
        "_operator.getitem",
        "_operator.add",
        "_operator.sub",
        "_operator.mul",
        "_operator.truediv",
        "_operator.floordiv",
        "_operator.mod",
        "_operator.pow",
        "_operator.neg",
        "_operator.pos",
        "_operator.eq",
        "_operator.ne",
        "_operator.lt",
        "_operator.le",
        "_operator.gt",
        "_operator.ge",
        "_operator.and_",
        "_operator.or_",
        "_operator.lshift",
        "_operator.rshift",
        "math.trunc",
        "torch.sym_int",
        "torch.sym_float",
        "torch.sym_ite",
        "torch.sym_max",
        "torch.sym_min",
        "torch.sym_not",
        "torch._sym_sqrt",
    }
)

#: The ``aten`` operators whose names are Python "dunder" names (from torch 2.13's
#: registry).  Any other ``__name__`` under ``torch.ops.NS`` is a Python attribute of the
#: namespace object, not an operator.
DUNDER_OPERATORS = frozenset(
    {
        "__and__",
        "__contains__",
        "__getitem__",
        "__iand__",
        "__ilshift__",
        "__ior__",
        "__irshift__",
        "__is__",
        "__isnot__",
        "__ixor__",
        "__lshift__",
        "__not__",
        "__or__",
        "__rshift__",
        "__xor__",
    }
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def operator_refusal(namespace: str, name: str) -> str | None:
    """Why operator ``namespace::name`` is refused, or None where it is allowed.

    >>> operator_refusal("aten", "linear") is None
    True
    >>> operator_refusal("aten", "from_file")
    'file access'
    >>> operator_refusal("image", "read_file")
    "namespace 'image' is not allowed"
    """
    if not _IDENTIFIER.fullmatch(namespace) or not _IDENTIFIER.fullmatch(name):
        return "not an operator name"
    if namespace not in ALLOWED_NAMESPACES:
        return f"namespace {namespace!r} is not allowed"
    if name.startswith("__") and name.endswith("__") and name not in DUNDER_OPERATORS:
        return "not an operator name"
    return DENIED_OPERATORS.get(f"{namespace}::{name}")


def qualified_refusal(qualified: str) -> str | None:
    """:func:`operator_refusal` of ``"namespace::name"``."""
    namespace, sep, name = qualified.partition("::")
    if not sep:
        return "not an operator name"
    return operator_refusal(namespace, name)


def custom_class_refusal(namespace: str, name: str) -> str | None:
    """Why TorchScript custom class ``torch.classes.namespace.name`` is refused, or None."""
    if f"{namespace}.{name}" in ALLOWED_CUSTOM_CLASSES:
        return None
    return "a custom class not on the allow-list (its C++ methods run at load)"


def higher_order_refusal(name: str) -> str | None:
    """Why higher-order operator ``torch.ops.higher_order.name`` is refused, or None."""
    if name in ALLOWED_HIGHER_ORDER:
        return None
    return "a higher-order operator not on the allow-list"
