"""Write backbones in open_clip's local folder layout (for offline use and benchmarks).

The folder holds ``open_clip_config.json``, ``open_clip_model.safetensors`` and
a ``text/`` folder with the BERT config and tokenizer files; the config names
``text`` relative to the folder, which ``backbone.load_backbone`` resolves.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .backbone import OPENAI_MEAN, OPENAI_STD
from .tiny import (
    build_tiny_clip,
    build_tiny_tokenizer,
    state_dict_for_open_clip,
    tiny_bert_config,
    tiny_open_clip_config,
)

# BiomedCLIP's architecture (open_clip config of the Hub model) with the text tower in `text/`.
BIOMEDCLIP_MODEL_CFG = {
    "embed_dim": 512,
    "vision_cfg": {
        "timm_model_name": "vit_base_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
    "text_cfg": {
        "hf_model_name": "text",
        "hf_tokenizer_name": "text",
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": 256,
    },
}
# BiomedBERT-base (uncased, abstract) shape.
BIOMEDBERT_SHAPE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)


def write_tiny_backbone(out_dir: str | Path) -> str:
    """Save the in-process ``tiny`` model as a local dir; returns its ``local-dir:`` spec."""
    out = Path(out_dir)
    _write_text_dir(out / "text", tiny_bert_config(), build_tiny_tokenizer())
    _write_config(out, tiny_open_clip_config("text"), random_weights=True, note="tiny test model")
    save_file(state_dict_for_open_clip(build_tiny_clip()), str(out / "open_clip_model.safetensors"))
    return f"local-dir:{out}"


def write_random_biomedclip(out_dir: str | Path, seed: int = 0) -> str:
    """A random-weight model of BiomedCLIP's exact shape (ViT-B/16 + BERT-base, 512-d).

    For benchmarks without network: timings are those of the real model,
    predictions are meaningless. The tokenizer is the tiny WordPiece vocabulary.
    """
    import open_clip
    from transformers import BertConfig

    out = Path(out_dir)
    _write_text_dir(out / "text", BertConfig(**BIOMEDBERT_SHAPE), build_tiny_tokenizer())
    cfg = json.loads(json.dumps(BIOMEDCLIP_MODEL_CFG))
    _write_config(out, cfg, random_weights=True, note="random weights of BiomedCLIP's shape")
    cfg["text_cfg"]["hf_model_name"] = str((out / "text").resolve())
    cfg["text_cfg"]["hf_model_pretrained"] = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.CustomTextCLIP(**cfg)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))  # where trained CLIP models end
    save_file(state_dict_for_open_clip(clip), str(out / "open_clip_model.safetensors"))
    return f"local-dir:{out}"


def _write_text_dir(path: Path, bert_config, tokenizer) -> None:
    path.mkdir(parents=True, exist_ok=True)
    bert_config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def _write_config(out: Path, model_cfg: dict, random_weights: bool, note: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)},
        "dpt": {"random_weights": random_weights, "note": note},
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
