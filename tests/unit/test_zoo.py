"""The bundled zoo builders (worker.zoo): models by name, random weights, nothing downloaded.

The unit tier refuses sockets, so every model built here was built without the network.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.fixtures import TINY_BERT
from worker.allowlist import resolve_builder
from worker.errors import BuilderNotAllowed
from worker.zoo import timm_model, torchvision_model, transformers_model


def _importable(name: str) -> str | None:
    """Why ``name`` cannot be used here, or None where it imports."""
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed"
    try:
        importlib.import_module(name)
    except Exception as exc:  # torchvision beside a torch it was not built for fails at import
        return f"{name} cannot be imported beside torch {torch.__version__}: {exc}"
    return None


TORCHVISION_MISSING = _importable("torchvision")
TIMM_MISSING = _importable("timm")


def test_transformers_model_from_an_inline_config_returns_plain_tuples() -> None:
    model = transformers_model("BertModel", TINY_BERT, seed=3).eval()
    assert type(model).__name__ == "BertModel"
    assert model.config.hidden_size == 16 and model.config.use_cache is False
    out = model(torch.randint(0, 64, (2, 5)))
    assert isinstance(out, tuple) and out[0].shape == (2, 5, 16)


def test_transformers_model_weights_follow_the_seed() -> None:
    a, b, c = (transformers_model("BertModel", TINY_BERT, seed=s) for s in (1, 1, 2))
    first = "embeddings.word_embeddings.weight"
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_transformers_model_config_without_model_type_uses_the_class_config() -> None:
    config = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    model = transformers_model("BertModel", config)
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 1


def test_the_spec_config_overrides_the_defaults() -> None:
    model = transformers_model("BertModel", {**TINY_BERT, "use_cache": True})
    assert model.config.use_cache is True


def test_a_wrapping_model_returns_tuples_too() -> None:
    gpt2 = {"model_type": "gpt2", "vocab_size": 64, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16}
    model = transformers_model("GPT2LMHeadModel", {**gpt2, "bos_token_id": 0, "eos_token_id": 0})
    out = model(torch.zeros(1, 4).long())
    assert isinstance(out, tuple) and out[0].shape == (1, 4, 64)


def test_model_outputs_without_tuple_outputs() -> None:
    out = transformers_model("BertModel", TINY_BERT, tuple_outputs=False)(torch.zeros(1, 4).long())
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"


@pytest.mark.parametrize("name", ["AutoConfig", "BertConfig", "pipeline", "os", "__class__", "NoSuchModel", "a.b"])
def test_transformers_model_refuses_what_is_not_a_model_class(name: str) -> None:
    with pytest.raises(ValueError, match="not a model class of transformers"):
        transformers_model(name, TINY_BERT)


def test_transformers_model_refuses_a_config_of_another_model() -> None:
    with pytest.raises(ValueError, match="GPT2Model takes a GPT2Config"):
        transformers_model("GPT2Model", TINY_BERT)


@pytest.mark.parametrize(
    ("builder", "kwargs"),
    [
        (torchvision_model, {"weights": "DEFAULT"}),
        (torchvision_model, {"weights_backbone": "IMAGENET1K_V1"}),
        (timm_model, {"pretrained": True}),
        (timm_model, {"checkpoint_path": "/etc/passwd"}),
    ],
)
def test_download_arguments_are_refused_before_the_library_is_used(builder: object, kwargs: dict[str, object]) -> None:
    assert callable(builder)
    with pytest.raises(ValueError, match="would load pretrained weights"):
        builder("resnet18", **kwargs)


def test_the_zoo_builders_are_allowed_by_their_module_or_exact_names() -> None:
    for name in ("torchvision_model", "timm_model", "transformers_model"):
        assert resolve_builder(f"worker.zoo:{name}", ["worker.zoo"]).__name__ == name
        assert resolve_builder(f"worker.zoo:{name}", [f"worker.zoo:{name}"]).__name__ == name
    with pytest.raises(BuilderNotAllowed):
        resolve_builder("worker.zoo:_refuse_downloads", ["worker.zoo"])
    with pytest.raises(BuilderNotAllowed):
        resolve_builder("worker.zoo:timm_model", ["worker.zoo:transformers_model"])


@pytest.mark.skipif(TORCHVISION_MISSING is not None, reason=str(TORCHVISION_MISSING))
def test_torchvision_model_by_name() -> None:
    model = torchvision_model("resnet18", num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="no model"):
        torchvision_model("no_such_net")


@pytest.mark.skipif(TIMM_MISSING is not None, reason=str(TIMM_MISSING))
def test_timm_model_by_name() -> None:
    model = timm_model("resnet18", num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="no model"):
        timm_model("no_such_net")


@pytest.mark.skipif(TORCHVISION_MISSING is None, reason="torchvision imports here")
def test_torchvision_model_without_torchvision_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"export-worker\[torchvision\]"):
        torchvision_model("resnet18")
