"""Bundled builders of model zoos: a torchvision, timm or transformers model by name.

Each is registered (:func:`~worker.allowlist.register_builder`), so a deployment allows them
by their exact names (``worker.zoo:transformers_model``) or all three with the ``worker.zoo``
entry.  The libraries are optional extras (``pip install export-worker[transformers]``),
imported when a builder is called, so that this module imports without them.

Nothing is ever downloaded: every model is built with random weights from its name and
keyword arguments, or from its config (inline in the spec, or a snapshot's ``config.json``);
arguments that would fetch pretrained weights are refused.  Trained weights come from the
spec's ``weights``, loaded into the built module by the worker, as for any builder.

Where the spec's ``weights`` is a snapshot prefix, a builder with a :class:`SnapshotUse`
(:data:`SNAPSHOT_USES`) also gets the snapshot's ``config.json`` as its config, and the
snapshot's config and tokenizer files are carried into the archive as extra files
(:mod:`worker.export.snapshot`).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .allowlist import register_builder

#: Keyword arguments that make torchvision or timm fetch (or read) pretrained weights; the
#: worker loads weights from the spec's ``weights`` only, never from a hub.
DOWNLOAD_ARGUMENTS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_cfg", "checkpoint_path"})
#: Config values set unless the spec's config gives its own: no key/value cache among the
#: outputs (a cache object is neither traceable nor a tensor).
TRANSFORMERS_DEFAULTS: Mapping[str, Any] = {"use_cache": False}
#: Environment that keeps transformers and huggingface_hub off the network, set before either
#: is imported by a builder.
OFFLINE_ENVIRONMENT: Mapping[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class SnapshotUse:
    """What a builder takes from the snapshot its spec's ``weights`` name."""

    #: The keyword argument that gets the snapshot's ``config.json`` (unless the spec gives it).
    config_argument: str
    #: Files of the snapshot carried into the archive as extra files, where they exist.
    carried: tuple[str, ...]


#: A Hugging Face snapshot's config and tokenizer files: what a consumer needs beside the
#: weights to feed the model and read its outputs.
TRANSFORMERS_CARRIED = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _refuse_downloads(library: str, kwargs: Mapping[str, Any]) -> None:
    asked = sorted(k for k in DOWNLOAD_ARGUMENTS & kwargs.keys() if kwargs[k] not in (None, False))
    if asked:
        raise ValueError(
            f"{library} argument(s) {', '.join(asked)} would load pretrained weights; the worker downloads "
            "nothing: leave them out and give the weights in the spec's 'weights' (an s3:// URI)"
        )


def _library(name: str, extra: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"{name} cannot be imported on this worker ({exc}); install export-worker[{extra}]") from exc


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


@register_builder
def torchvision_model(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """A torchvision model by its registry name (``resnet18``, ``mobilenet_v3_small``), with
    random weights drawn from ``seed``; ``kwargs`` go to the model (``num_classes=10``).

    Raises:
        ValueError: ``weights``/``weights_backbone`` given, or no such model.
        ImportError: torchvision is not installed (extra ``torchvision``).
    """
    _refuse_downloads("torchvision", kwargs)
    models = _library("torchvision.models", "torchvision")
    if name not in models.list_models():
        raise ValueError(f"torchvision has no model {name!r}; torchvision.models.list_models() names them")
    _seeded(seed)
    module: nn.Module = models.get_model(name, weights=None, **kwargs)
    return module


@register_builder
def timm_model(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """A timm model by its registry name (``resnet18``, ``vit_tiny_patch16_224``), with random
    weights drawn from ``seed``; ``kwargs`` go to ``timm.create_model`` (``num_classes=10``).

    Raises:
        ValueError: ``pretrained``, ``pretrained_cfg`` or ``checkpoint_path`` given, or no such model.
        ImportError: timm is not installed (extra ``timm``).
    """
    _refuse_downloads("timm", kwargs)
    timm = _library("timm", "timm")
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; timm.list_models() names them")
    _seeded(seed)
    module: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
    return module


def _model_class(transformers: Any, class_name: str) -> Any:
    """The PreTrainedModel subclass of transformers named ``class_name``.

    Raises:
        ValueError: no such name, or not a model class.
    """
    try:  # transformers' namespace is lazy: a class is imported when first asked for
        cls = getattr(transformers, class_name) if class_name.isidentifier() else None
    except (AttributeError, ImportError, RuntimeError):
        cls = None
    if not (inspect.isclass(cls) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{class_name!r} is not a model class of transformers (a PreTrainedModel subclass)")
    return cls


@register_builder
def transformers_model(
    class_name: str, config: dict[str, Any] | None = None, seed: int = 0, tuple_outputs: bool = True
) -> nn.Module:
    """A transformers model of class ``class_name`` (``BertModel``, ``GPT2LMHeadModel``,
    ``ViTForImageClassification``) built from ``config``, with random weights from ``seed``.

    ``config`` is the model's ``config.json`` as a dict: with its ``model_type`` it is
    ``AutoConfig.for_model(**config)``, without, the class's own config class.  Unless it
    says otherwise, ``use_cache`` is off (:data:`TRANSFORMERS_DEFAULTS`); with
    ``tuple_outputs`` the model is called with ``return_dict=False`` and returns a tuple of
    tensors (which a TorchScript or .pt2 archive returns without transformers, and the build
    record saves as plain tensors).  Nothing is fetched from a hub: no
    ``from_pretrained``, and the hub is switched off (:data:`OFFLINE_ENVIRONMENT`).

    Raises:
        ValueError: ``class_name`` is not a model class of transformers, or the config does
            not fit it.
        ImportError: transformers is not installed (extra ``transformers``).
    """
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    transformers = _library("transformers", "transformers")
    cls = _model_class(transformers, class_name)
    settings = {**TRANSFORMERS_DEFAULTS, **(config or {})}
    model_type = settings.pop("model_type", None)
    built_config = (
        transformers.AutoConfig.for_model(model_type, **settings)
        if model_type is not None
        else cls.config_class(**settings)
    )
    if not isinstance(built_config, cls.config_class):
        raise ValueError(
            f"config of model_type {model_type!r} is a {type(built_config).__name__}; "
            f"{class_name} takes a {cls.config_class.__name__}"
        )
    _seeded(seed)
    module: nn.Module = cls(built_config)
    if tuple_outputs:
        module.register_forward_pre_hook(_tuple_outputs, with_kwargs=True)
    return module


def _tuple_outputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Every call with ``return_dict=False``: a tuple of tensors out.  Asked per call, not set
    in the config, where transformers 5 models that wrap another (``GPT2LMHeadModel``,
    ``BartModel``) would get a tuple from the inner one and fail."""
    return args, {**kwargs, "return_dict": False}


#: Builders that take a config and files from a snapshot, by their spec names.
SNAPSHOT_USES: Mapping[str, SnapshotUse] = {
    "worker.zoo:transformers_model": SnapshotUse(config_argument="config", carried=TRANSFORMERS_CARRIED),
}
