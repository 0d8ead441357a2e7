"""Backbone loading: the one module that talks to open_clip.

A backbone spec is one string everywhere (CLI ``--backbone``, env
``DPT_BACKBONE``, checkpoint config):

- ``hf-hub:ORG/REPO``  - open_clip's own Hub loader (default: BiomedCLIP);
- ``local-dir:PATH``   - open_clip's folder layout; text-tower and tokenizer
  names in its config may be folders *relative to PATH* (open_clip resolves
  them against the working directory; we resolve them against PATH);
- ``tiny``             - a random-weight model of the same structure (tests).

Every parameter is frozen and the model stays in eval mode; training code
switches the BERT dropout on explicitly where the recipe wants it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ResourceError
from .integrity import nonfinite_problem
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
TINY = "tiny"


class BackboneError(ResourceError):
    """A backbone could not be loaded; the message says why and what to do."""


class TextCache:
    """Text features by sentence, bounded: beyond ``max_items`` the least recently used goes.

    A preset's sentences are read on every request, so they stay; one-off sentences
    (edited descriptions, typed phrases) are what a long-running server drops.
    """

    def __init__(self, max_items: int = 50_000):  # ~2 KB a sentence at 512-d: every bank fits many times
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, text: object) -> bool:
        return text in self._items

    def get(self, text: str) -> torch.Tensor | None:
        feature = self._items.get(text)
        if feature is not None:
            self._items.move_to_end(text)
        return feature

    def put(self, texts: Sequence[str], features: torch.Tensor) -> None:
        for text, feature in zip(texts, features, strict=True):
            self._items[text] = feature
            self._items.move_to_end(text)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)


@dataclass
class Backbone:
    """A frozen open_clip CLIP model with a BERT text tower, plus its tokenizer and preprocessing."""

    clip: nn.Module  # has .visual (TimmModel: .trunk, .head), .text (HFTextEncoder), .logit_scale
    tokenizer: TextTokenizer
    spec: str
    random_weights: bool = False  # True for `tiny` and for random full-size models
    revision: str | None = None
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    # Grad-CAM and rollout hook into the shared model; one explanation at a time per backbone.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Normalised text features by sentence (CPU), shared by every user of this backbone:
    # editing one description re-encodes only that sentence.
    text_cache: TextCache = field(default_factory=TextCache, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.clip.requires_grad_(False)
        self.clip.eval()

    # Named parts, so that the rest of the code never reaches into open_clip's attribute layout.
    @property
    def trunk(self) -> nn.Module:
        return self.clip.visual.trunk

    @property
    def visual_proj(self) -> nn.Module:
        return self.clip.visual.head

    @property
    def bert(self) -> nn.Module:
        return self.clip.text.transformer

    @property
    def text_pooler(self) -> nn.Module:
        return self.clip.text.pooler

    @property
    def text_proj(self) -> nn.Module:
        return self.clip.text.proj

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.get_input_embeddings()

    @property
    def text_width(self) -> int:
        return int(self.word_embeddings.embedding_dim)

    @property
    def vision_width(self) -> int:
        return int(self.trunk.embed_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.head.proj.out_features)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.grid_size)

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def logit_scale(self) -> torch.Tensor:
        """tau = exp(logit_scale) of the checkpoint itself (never a hard-coded temperature)."""
        return self.clip.logit_scale.exp()

    def to(self, device: torch.device | str) -> "Backbone":
        self.clip.to(device)
        return self

    def describe(self) -> dict:
        return {"backbone": self.spec, "revision": self.revision, "random_weights": self.random_weights}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a backbone spec into (kind, identifier), kind in {'hf-hub', 'local-dir', 'tiny'}."""
    spec = (spec or "").strip()
    if spec == TINY:
        return TINY, ""
    if spec.startswith(HF_PREFIX) and spec[len(HF_PREFIX):].count("/") >= 1:
        return "hf-hub", spec[len(HF_PREFIX):]
    if spec.startswith(LOCAL_PREFIX) and spec[len(LOCAL_PREFIX):]:
        return "local-dir", spec[len(LOCAL_PREFIX):]
    raise BackboneError(
        f"unknown backbone spec {spec!r}: use 'hf-hub:ORG/REPO', 'local-dir:PATH' or 'tiny'"
    )


_CACHE: dict[tuple[str, str], Backbone] = {}
_CACHE_LOCK = threading.Lock()


def load_backbone(spec: str | None = None, device: torch.device | str | None = None) -> Backbone:
    """Load (once per process and device) the frozen backbone named by ``spec``.

    ``spec`` defaults to ``$DPT_BACKBONE``, else BiomedCLIP from the Hub.
    """
    spec = spec or os.environ.get("DPT_BACKBONE") or DEFAULT_BACKBONE
    device = torch.device(device) if device is not None else default_device()
    key = (spec, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            kind, ident = parse_spec(spec)
            loader = {TINY: _load_tiny, "hf-hub": _load_hf_hub, "local-dir": _load_local_dir}[kind]
            backbone = loader(spec, ident)
            if problem := nonfinite_problem(backbone.clip.state_dict()):  # damaged weights must not "predict"
                raise BackboneError(f"the weights of {spec} are damaged: {problem}")
            _CACHE[key] = backbone.to(device)
        return _CACHE[key]


def _load_tiny(spec: str, _ident: str) -> Backbone:
    from .tiny import TINY_CONTEXT_LENGTH, build_tiny_clip, build_tiny_tokenizer

    return Backbone(
        clip=build_tiny_clip(),
        tokenizer=TextTokenizer(build_tiny_tokenizer(), TINY_CONTEXT_LENGTH),
        spec=spec,
        random_weights=True,
    )


def _load_hf_hub(spec: str, ident: str) -> Backbone:
    import open_clip

    try:
        clip = open_clip.create_model(spec, device="cpu")
        oc_tok = open_clip.get_tokenizer(spec)
    except Exception as exc:  # network, auth, missing files: all end here with one clear message
        raise BackboneError(
            f"could not load {spec} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Check the network or pre-download it, or use a 'local-dir:' copy."
        ) from exc
    pp = getattr(clip.visual, "preprocess_cfg", {}) or {}
    return Backbone(
        clip=clip,
        tokenizer=TextTokenizer(oc_tok.tokenizer, oc_tok.context_length),
        spec=spec,
        revision=_hub_revision(ident),
        image_size=_side(pp.get("size", 224)),
        mean=tuple(pp.get("mean", OPENAI_MEAN)),
        std=tuple(pp.get("std", OPENAI_STD)),
    )


def _hub_revision(repo_id: str) -> str | None:
    """The commit of the cached snapshot, when the Hub cache knows it."""
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == repo_id and repo.revisions:
                return max(repo.revisions, key=lambda r: r.last_modified).commit_hash
    except Exception:  # the revision is informative only
        return None
    return None


def _load_local_dir(spec: str, ident: str) -> Backbone:
    import open_clip
    from transformers import AutoTokenizer

    root = Path(ident).expanduser().resolve()
    cfg_path = root / "open_clip_config.json"
    if not cfg_path.is_file():
        raise BackboneError(f"{spec}: no open_clip_config.json in that folder")
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    model_cfg = dict(raw.get("model_cfg", raw))
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    if not text_cfg.get("hf_model_name"):
        raise BackboneError(f"{spec}: only BERT-text-tower (CustomTextCLIP) models are supported")
    text_cfg["hf_model_name"] = _resolve_name(root, text_cfg["hf_model_name"])
    tok_source = _resolve_name(root, text_cfg.get("hf_tokenizer_name") or "") or str(root)
    text_cfg["hf_tokenizer_name"] = tok_source
    text_cfg["hf_model_pretrained"] = False  # the full CLIP weights below cover the text tower
    model_cfg["text_cfg"] = text_cfg
    vision_cfg = dict(model_cfg.get("vision_cfg", {}))
    vision_cfg["timm_model_pretrained"] = False
    model_cfg["vision_cfg"] = vision_cfg
    model_cfg.pop("custom_text", None)
    if vision_cfg.get("timm_model_name", "").startswith("dpt_"):
        from . import tiny  # noqa: F401  (registers our tiny ViT with timm)

    weights = _find_weights(root)
    if weights is None:
        raise BackboneError(f"{spec}: no open_clip_model.safetensors or open_clip_pytorch_model.bin")
    try:
        clip = open_clip.CustomTextCLIP(**model_cfg)
        open_clip.load_checkpoint(clip, str(weights), strict=True, weights_only=True)
        hf_tok = AutoTokenizer.from_pretrained(tok_source)
    except Exception as exc:
        raise BackboneError(f"{spec}: could not build the model ({type(exc).__name__}: {exc})") from exc
    pp = raw.get("preprocess_cfg", {})
    meta = raw.get("dpt", {})  # our own annotations, e.g. written by write_random_fullsize
    return Backbone(
        clip=clip,
        tokenizer=TextTokenizer(hf_tok, int(text_cfg.get("context_length", 256))),
        spec=spec,
        random_weights=bool(meta.get("random_weights", False)),
        image_size=_side(vision_cfg.get("image_size", 224)),
        mean=tuple(pp.get("mean", OPENAI_MEAN)),
        std=tuple(pp.get("std", OPENAI_STD)),
    )


def _resolve_name(root: Path, name: str) -> str:
    """A Hub id stays as it is; a folder name relative to the backbone folder becomes absolute."""
    if not name:
        return name
    candidate = (root / name)
    if candidate.is_dir():
        return str(candidate.resolve())
    return name


def _find_weights(root: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.safetensors"):
        if (root / name).is_file():
            return root / name
    return None


def _side(size) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)
