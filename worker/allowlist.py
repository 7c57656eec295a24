"""Which builders a spec may name: the entries of ``EXPORT_ALLOWED_BUILDERS``, the decorator
that registers a builder, and the checks made before and after its module is imported.

An entry is either

* an exact callable, ``pkg.module:function`` (or ``:Class``): that one builder, which must be
  a plain function or class defined in ``pkg.module`` itself; or
* a module, ``pkg.module``: that module and its submodules (``acme.models`` covers
  ``acme.models.vision``, not ``acme.models_old``), which offer only the builders they mark
  with :func:`register_builder`.

Either way a builder is the object its name says, defined where its name says: what a module
merely imports (``from torch.hub import load_state_dict_from_url``) is never a builder of
that module.  A builder that no entry could allow is refused before anything is imported.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import BuilderNotAllowed, BuildFailed

#: A function or class, as it is decorated (the decorator returns it unchanged).
B = TypeVar("B", bound=Callable[..., object])

#: The builders registered so far, keyed by ``module:qualname``; filled as modules import.
_REGISTERED: dict[str, Callable[..., object]] = {}


def builder_name(obj: Callable[..., object]) -> str:
    """The name a spec gives a builder: ``module:qualname`` of where it is defined."""
    return f"{obj.__module__}:{obj.__qualname__}"


def register_builder(obj: B) -> B:
    """Offer a function or class as a builder of the module that defines it.

    Specs name it ``module:qualname``; a module entry of ``EXPORT_ALLOWED_BUILDERS`` allows
    only the builders registered this way.  Decorate at module level, on a function or class
    defined there::

        from worker.allowlist import register_builder

        @register_builder
        def build_classifier(classes: int = 10) -> nn.Module: ...

    Raises:
        TypeError: ``obj`` is not a plain function or class at the top level of its module
            (a spec could not name it).
    """
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        raise TypeError(f"register_builder takes a function or class, got {type(obj).__name__}")
    if "." in obj.__qualname__ or "<" in obj.__qualname__:
        raise TypeError(f"register_builder takes a top-level function or class, got {builder_name(obj)}")
    _REGISTERED[builder_name(obj)] = obj
    return obj


@dataclass(frozen=True)
class _Rule:
    """One entry of the allow-list, as written (trimmed)."""

    entry: str
    #: ``module:callable`` (that builder only) rather than a module prefix.
    exact: bool

    def covers(self, builder: str) -> bool:
        """Whether the name alone could be allowed by this entry (nothing imported)."""
        if self.exact:
            return builder == self.entry
        module = builder.partition(":")[0]
        return module == self.entry or module.startswith(self.entry + ".")


def _rules(allowed: Sequence[str]) -> list[_Rule]:
    rules = []
    for raw in allowed:
        entry = raw.strip()
        if ":" in entry:
            rules.append(_Rule(entry, exact=True))
        elif entry.rstrip("."):
            rules.append(_Rule(entry.rstrip("."), exact=False))
    return rules


def _rule_for(builder: str, allowed: Sequence[str]) -> _Rule:
    rules = [rule for rule in _rules(allowed) if rule.covers(builder)]
    if not rules:
        raise BuilderNotAllowed(
            f"builder {builder!r} is not under EXPORT_ALLOWED_BUILDERS ({', '.join(allowed) or 'empty'}); "
            "add it to the setting on the workers, as 'module:callable' or as its module of registered builders"
        )
    # An exact entry asks less of the builder (no registration): it wins over a module entry.
    return next((rule for rule in rules if rule.exact), rules[0])


def check_allowed(builder: str, allowed: Sequence[str]) -> str:
    """Return the builder's module name if an entry of the allow-list could allow it.

    Only the name is compared, so nothing has been imported yet; :func:`resolve_builder` then
    checks the object the name finds.

    Raises:
        BuilderNotAllowed: no entry names the builder or its module (or a package above it).
    """
    _rule_for(builder, allowed)
    return builder.partition(":")[0]


def resolve_builder(builder: str, allowed: Sequence[str]) -> Callable[..., object]:
    """Import an allowed builder's module and return the builder, without calling it.

    Raises:
        BuilderNotAllowed: outside the allow-list (nothing imported); not a plain function or
            class; imported into the module rather than defined there; or, under a module
            entry, not registered with :func:`register_builder`.
        BuildFailed: the module cannot be imported, or has no such attribute.
    """
    rule = _rule_for(builder, allowed)
    module_name, _, attr = builder.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BuildFailed(f"cannot import builder {builder!r}: {exc}") from exc
    # The module's own namespace: no module-level __getattr__, no attributes of the module object.
    namespace = vars(module)
    if attr not in namespace:
        raise BuildFailed(f"cannot import builder {builder!r}: module {module_name!r} has no attribute {attr!r}")
    obj = namespace[attr]
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        raise BuilderNotAllowed(
            f"builder {builder!r} is a {type(obj).__name__}, not a function or class; "
            "a builder is a plain function or class defined in the module it is named by"
        )
    if builder_name(obj) != builder:
        raise BuilderNotAllowed(
            f"builder {builder!r} is {builder_name(obj)}, imported into {module_name}, not defined there; "
            "a builder must be defined in the module it is named by"
        )
    if not rule.exact and _REGISTERED.get(builder) is not obj:
        raise BuilderNotAllowed(
            f"builder {builder!r} is not registered: the EXPORT_ALLOWED_BUILDERS entry {rule.entry!r} "
            "allows only builders its modules mark with @register_builder (or name it as 'module:callable')"
        )
    return obj
