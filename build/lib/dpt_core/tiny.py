"""The ``tiny`` backbone: a deterministic, random-weight model of BiomedCLIP's structure.

Built in-process with no file and no network, for tests and for an offline UI
check. Same structure as BiomedCLIP (timm ViT, patch 16 at 224 px -> 14x14 + CLS
= 197 tokens, linear image projection; BERT with CLS pooling and an MLP text
projection; a real WordPiece tokenizer), only narrower and shallower.
Predictions made with it are meaningless.
"""
from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from functools import lru_cache

import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .presets import ASSETS_DIR

TINY_VIT_NAME = "dpt_tiny_vit_patch16_224"  # registered with timm below, so open_clip configs can name it
TINY_EMBED_DIM = 32
TINY_VISION = dict(patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
TINY_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TINY_CONTEXT_LENGTH = 256
# Trained CLIP models end near ln(100); open_clip's untrained ln(1/0.07) would make prompt learning slow.
TINY_LOGIT_SCALE = math.log(100.0)
_SEED = 0

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] must be id 0, as in BERT


def dpt_tiny_vit_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT with BiomedCLIP's token grid (224 px, patch 16, CLS) at a fraction of the width."""
    if pretrained:
        raise ValueError(f"{TINY_VIT_NAME} has no pretrained weights")
    # timm's factory passes its own bookkeeping (pretrained_cfg, ...) that the class doesn't take.
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = VisionTransformer(img_size=224, **{**TINY_VISION, **kwargs})
    # What timm's builder would attach; open_clip's TimmModel reads it.
    model.pretrained_cfg = model.default_cfg = {"input_size": (3, 224, 224), "num_classes": model.num_classes}
    return model


if TINY_VIT_NAME not in timm.list_models(TINY_VIT_NAME):
    register_model(dpt_tiny_vit_patch16_224)


@lru_cache(maxsize=1)
def tiny_vocab() -> tuple[str, ...]:
    """WordPiece vocabulary: specials, characters (so any text tokenises) and the words of our assets.

    Whole words of the presets and description bank keep tiny prompts short,
    which keeps tests fast; everything else falls back to single characters.
    """
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    punct = list(".,;:!?()[]{}-_'\"/\\&%+*=<>#@$^|~`")
    words: set[str] = set()
    for path in sorted(ASSETS_DIR.glob("presets/*.json")) + sorted(ASSETS_DIR.glob("descriptions/*.json")):
        words.update(re.findall(r"[a-z]+", json.dumps(json.loads(path.read_text(encoding="utf-8"))).lower()))
    words -= set(chars)
    return tuple(SPECIAL_TOKENS + punct + chars + ["##" + c for c in chars] + sorted(words))


def build_tiny_tokenizer():
    """A real fast BERT tokenizer (lower-casing, WordPiece) over ``tiny_vocab()``, built in memory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=TINY_CONTEXT_LENGTH,
    )


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tiny_vocab()),
        max_position_embeddings=TINY_CONTEXT_LENGTH,
        pad_token_id=0,
        # BERT's 0.02 init makes a narrow random tower map every sentence to nearly the same
        # feature; a wider init keeps tiny prompts distinguishable, so learning on it means
        # something. That also makes it hypersensitive to noise: BiomedBERT's dropout (0.1,
        # harmless in the trained tower) stops it learning at all, so the tiny tower has none.
        # The training code still runs a dropout-mode copy, exactly as for the real backbone.
        initializer_range=0.2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **TINY_TEXT,
    )


def tiny_open_clip_config(text_dir: str = "text") -> dict:
    """open_clip ``model_cfg`` of the tiny model, for writing it as a ``local-dir:`` backbone."""
    return {
        "embed_dim": TINY_EMBED_DIM,
        "vision_cfg": {
            "timm_model_name": TINY_VIT_NAME,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": text_dir,
            "hf_tokenizer_name": text_dir,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": TINY_CONTEXT_LENGTH,
        },
    }


class TinyCLIP(nn.Module):
    """Container with CustomTextCLIP's attribute names: ``visual``, ``text``, ``logit_scale``.

    Its state dict has the same keys as open_clip's CustomTextCLIP built from
    ``tiny_open_clip_config()``, so it can be saved and reloaded as a local dir.
    """

    def __init__(self) -> None:
        super().__init__()
        from open_clip.hf_model import HFTextEncoder
        from open_clip.timm_model import TimmModel

        self.visual = TimmModel(TINY_VIT_NAME, TINY_EMBED_DIM, image_size=224, pool="", proj="linear")
        self.text = HFTextEncoder(
            "tiny-bert",
            output_dim=TINY_EMBED_DIM,
            config=tiny_bert_config(),
            pooler_type="cls_last_hidden_state_pooler",
            proj_type="mlp",
        )
        # open_clip builds BiomedCLIP's BERT without its pooling layer; match the keys.
        self.text.transformer.pooler = None
        self.logit_scale = nn.Parameter(torch.tensor(TINY_LOGIT_SCALE))


def build_tiny_clip() -> TinyCLIP:
    """Deterministic weights (seed 0) whatever the global RNG state; the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = TinyCLIP()
        # Non-zero LayerNorm biases in the ViT: LayerNorm(0) = beta, so the zero visual prompts
        # only have an effect (the attention sink) if beta != 0.
        for module in model.visual.modules():
            if isinstance(module, nn.LayerNorm) and module.bias is not None:
                nn.init.normal_(module.bias, std=0.2)
    return model.eval()


def state_dict_for_open_clip(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())
