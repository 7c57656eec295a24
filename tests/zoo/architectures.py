"""The zoo's architectures: tiny configs of transformers models (random weights), each with
the positional input its forward takes first, and the torchvision and timm models the zoo
would run where those libraries import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A text model's tiny sizes: small enough that an export takes seconds on one core.
TEXT = {"vocab_size": 96, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
IDS = [{"shape": [2, 8], "dtype": "int64", "low": 0, "high": 96}]
#: A vision model's input: two 32x32 RGB images.
PIXELS = [{"shape": [2, 3, 32, 32], "dtype": "float32"}]
VISION = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


@dataclass(frozen=True)
class Architecture:
    """One row of the zoo: a builder's kwargs and the example inputs its forward takes."""

    name: str
    library: str
    kwargs: dict[str, Any]
    example_inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def builder(self) -> str:
        return f"worker.zoo:{self.library}_model"


def hf(name: str, class_name: str, config: dict[str, Any], inputs: list[dict[str, Any]]) -> Architecture:
    return Architecture(name, "transformers", {"class_name": class_name, "config": config}, inputs)


TRANSFORMERS = [
    hf("BERT", "BertModel", {"model_type": "bert", **TEXT}, IDS),
    hf(
        "DistilBERT",
        "DistilBertModel",
        {"model_type": "distilbert", "vocab_size": 96, "dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32},
        IDS,
    ),
    hf("RoBERTa", "RobertaModel", {"model_type": "roberta", **TEXT, "pad_token_id": 1}, IDS),
    hf("ALBERT", "AlbertModel", {"model_type": "albert", **TEXT, "embedding_size": 8}, IDS),
    hf("ELECTRA", "ElectraModel", {"model_type": "electra", **TEXT, "embedding_size": 8}, IDS),
    hf(
        "GPT-2",
        "GPT2LMHeadModel",
        {
            "model_type": "gpt2",
            "vocab_size": 96,
            "n_embd": 16,
            "n_layer": 1,
            "n_head": 2,
            "n_positions": 32,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        IDS,
    ),
    hf(
        "GPT-Neo",
        "GPTNeoModel",
        {
            "model_type": "gpt_neo",
            "vocab_size": 96,
            "hidden_size": 16,
            "num_layers": 1,
            "num_heads": 2,
            "attention_types": [[["global"], 1]],
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        IDS,
    ),
    hf(
        "OPT",
        "OPTModel",
        {
            "model_type": "opt",
            "vocab_size": 96,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "ffn_dim": 32,
            "word_embed_proj_dim": 16,
            "max_position_embeddings": 32,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        IDS,
    ),
    hf(
        "Llama",
        "LlamaForCausalLM",
        {"model_type": "llama", **TEXT, "num_key_value_heads": 1, "max_position_embeddings": 32},
        IDS,
    ),
    hf(
        "Mistral",
        "MistralModel",
        {"model_type": "mistral", **TEXT, "num_key_value_heads": 1, "max_position_embeddings": 32},
        IDS,
    ),
    hf(
        "Qwen2",
        "Qwen2Model",
        {"model_type": "qwen2", **TEXT, "num_key_value_heads": 1, "max_position_embeddings": 32},
        IDS,
    ),
    hf("Phi", "PhiModel", {"model_type": "phi", **TEXT, "max_position_embeddings": 32}, IDS),
    hf(
        "T5 encoder",
        "T5EncoderModel",
        {"model_type": "t5", "vocab_size": 96, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2},
        IDS,
    ),
    hf(
        "BART",
        "BartModel",
        {
            "model_type": "bart",
            "vocab_size": 96,
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "max_position_embeddings": 32,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
        },
        IDS,
    ),
    hf("ViT", "ViTModel", {"model_type": "vit", **VISION, "image_size": 32, "patch_size": 8}, PIXELS),
    hf("DeiT", "DeiTModel", {"model_type": "deit", **VISION, "image_size": 32, "patch_size": 8}, PIXELS),
    hf(
        "Swin",
        "SwinModel",
        {
            "model_type": "swin",
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 8,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "window_size": 4,
        },
        PIXELS,
    ),
    hf(
        "ConvNeXt",
        "ConvNextModel",
        {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
        PIXELS,
    ),
    hf(
        "ResNet (transformers)",
        "ResNetModel",
        {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"},
        PIXELS,
    ),
    hf(
        "Wav2Vec2",
        "Wav2Vec2Model",
        {
            "model_type": "wav2vec2",
            **{k: v for k, v in TEXT.items() if k != "vocab_size"},
            "conv_dim": [8, 8],
            "conv_stride": [5, 4],
            "conv_kernel": [10, 8],
            "num_feat_extract_layers": 2,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
            "do_stable_layer_norm": False,
        },
        [{"shape": [2, 800], "dtype": "float32"}],
    ),
    hf(
        "CLIP vision",
        "CLIPVisionModel",
        {"model_type": "clip_vision_model", **VISION, "image_size": 32, "patch_size": 8},
        PIXELS,
    ),
    hf(
        "MobileViT",
        "MobileViTModel",
        {
            "model_type": "mobilevit",
            "image_size": 32,
            "patch_size": 2,
            "hidden_sizes": [16, 16, 16],
            "neck_hidden_sizes": [8, 8, 8, 16, 16, 16, 32],
            "num_attention_heads": 2,
        },
        PIXELS,
    ),
]

#: Rows the zoo runs where torchvision and timm import (they are missing here, or cannot be
#: imported beside this torch build).
TORCHVISION = [
    Architecture("resnet18 (torchvision)", "torchvision", {"name": "resnet18", "num_classes": 10}, PIXELS),
    Architecture("mobilenet_v3_small (torchvision)", "torchvision", {"name": "mobilenet_v3_small"}, PIXELS),
]
TIMM = [
    Architecture("resnet18 (timm)", "timm", {"name": "resnet18", "num_classes": 10}, PIXELS),
    Architecture("vit_tiny_patch16_224 (timm)", "timm", {"name": "vit_tiny_patch16_224", "img_size": 32}, PIXELS),
]
