"""The containers of a program's inputs and outputs that a consumer with only torch can load.

``torch.export`` records the structure of a program's inputs and outputs as pytree specs,
naming each container type.  A type that a library registers as a pytree node (a
transformers ``ModelOutput``, a dataclass) is saved by name and must be registered again
before ``torch.export.load`` reads the program: a consumer without that library cannot
load it ("... in pytree is not registered").  :func:`foreign_types` finds such types in a
program, and :func:`to_plain` turns an output into plain containers (dicts, lists,
tuples) that every torch process knows.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree

#: Container types every torch process can rebuild from a program's pytree specs.
PLAIN_CONTAINERS: frozenset[type] = frozenset({tuple, list, dict, OrderedDict})
#: Modules whose registered pytree types torch itself registers on import.
_TORCH_MODULE = "torch"


def is_plain_type(kind: type | None) -> bool:
    """Whether a pytree spec's node type is one a plain torch process knows: a leaf, a
    builtin container, or a type torch itself registers (``torch.return_types``, ``torch.Size``)."""
    if kind is None or kind in PLAIN_CONTAINERS:
        return True
    module = getattr(kind, "__module__", "") or ""
    return (module == _TORCH_MODULE or module.startswith(_TORCH_MODULE + ".")) and not _is_namedtuple(kind)


def _is_namedtuple(kind: type) -> bool:
    return isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")


def _spec_types(spec: pytree.TreeSpec) -> Iterator[type | None]:
    stack = [spec]
    while stack:
        node = stack.pop()
        yield node.type
        stack.extend(node.children())


def program_specs(program: torch.export.ExportedProgram) -> Iterator[pytree.TreeSpec]:
    """The pytree specs a saved program carries: its call's and each recorded module call's."""
    yield program.call_spec.in_spec
    yield program.call_spec.out_spec
    for entry in program.module_call_graph:
        if entry.signature is not None:
            yield entry.signature.in_spec
            yield entry.signature.out_spec


def foreign_types(program: torch.export.ExportedProgram) -> list[str]:
    """The container types in a program's inputs and outputs that a consumer needs another
    library (or the model's code) to load, as ``module.QualName``, sorted; empty when none."""
    found = {
        f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', repr(kind))}"
        for spec in program_specs(program)
        if spec is not None
        for kind in _spec_types(spec)
        if not is_plain_type(kind)
    }
    return sorted(found)


def is_plain(value: Any) -> bool:
    """Whether a model output holds only tensors, scalars, None and builtin dicts, lists and tuples."""
    if isinstance(value, dict):
        return type(value) in (dict, OrderedDict) and all(is_plain(v) for v in value.values())
    if isinstance(value, list | tuple):
        return type(value) in (list, tuple) and all(is_plain(v) for v in value)
    return not (dataclasses.is_dataclass(value) or isinstance(value, Mapping) or type(value) in pytree.SUPPORTED_NODES)


def to_plain(value: Any) -> Any:
    """A model output with every container turned into a builtin one: a mapping (a
    transformers ``ModelOutput``) into a dict of its items, a dataclass into a dict of its
    fields, a named tuple into a tuple, any other registered pytree node into a tuple of
    its children.  Tensors, scalars and None are kept."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):  # a named tuple too: its fields by position
        items = [to_plain(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    node = pytree.SUPPORTED_NODES.get(type(value))
    if node is not None:
        children, _ = node.flatten_fn(value)
        return tuple(to_plain(c) for c in children)
    return value
