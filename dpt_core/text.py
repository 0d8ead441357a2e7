"""Text side of Biomed-DPT (method.md section 2): the BERT text tower fed with learned context.

``TextEncoder`` runs the frozen tower on token ids or on input embeddings;
``PromptLearner`` owns the shared context ``ctx`` and assembles, per class,
``[CLS] ctx_1..ctx_n <rest of the template with the class name> [SEP]``.
The context replaces word-pieces 1..n_ctx of the template's own tokenisation,
so at initialisation the prompt *is* the template.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .text_tower import cls_hidden_state, supports_cls_only
from .tokenizer import TokenBatch


def shared_weight_copy(module: nn.Module) -> nn.Module:
    """A structural copy sharing every parameter and buffer with ``module``.

    Lets training run the frozen BERT with dropout on (as the reference does)
    without flipping the mode of the process-wide backbone that other
    requests are using at the same time. Costs no weight memory.
    """
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


class TextEncoder(nn.Module):
    """Projected text features (not normalised) from ids or from input embeddings."""

    def __init__(self, backbone: Backbone, bert: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self._bert = bert  # None: the shared (eval-mode) tower

    @property
    def bert(self) -> nn.Module:
        return self._bert if self._bert is not None else self.backbone.bert

    def with_dropout(self) -> "TextEncoder":
        """The same encoder with BERT dropout active (the reference's training-mode BERT)."""
        twin = shared_weight_copy(self.backbone.bert).train()
        return TextEncoder(self.backbone, twin)

    def _finish(self, out, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone.text_pooler(out, mask)  # CLS of the last hidden state
        return self.backbone.text_proj(pooled)

    def forward_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, L, W] input embeddings + [N, L] mask -> [N, E].

        The prompts' path (every training step): only the [CLS] row of the last layer is
        computed when the tower allows it (``text_tower``); the same features otherwise.
        """
        if supports_cls_only(self.bert, self.backbone.text_pooler):
            return self.backbone.text_proj(cls_hidden_state(self.bert, embeds, mask))
        out = self.bert(inputs_embeds=embeds, attention_mask=mask)
        return self._finish(out, mask)

    def forward_ids(self, batch: TokenBatch) -> torch.Tensor:
        out = self.bert(input_ids=batch.ids, attention_mask=batch.mask)
        return self._finish(out, batch.mask)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised features of plain sentences, [N, E] on the backbone's device."""
        feats = []
        for i in range(0, len(texts), batch_size):
            batch = self.backbone.tokenizer(list(texts[i:i + batch_size])).to(self.backbone.device)
            feats.append(F.normalize(self.forward_ids(batch), dim=-1))
        if not feats:
            return torch.zeros(0, self.backbone.embed_dim, device=self.backbone.device)
        return torch.cat(feats)


CLASS_POSITIONS = ("end", "middle")


def fill_template(template: str, class_name: str) -> str:
    return template.format(class_name.replace("_", " "))


class PromptLearner(nn.Module):
    """Shared learnable context ``ctx`` [n_ctx, W] plus per-class fixed prefix/suffix embeddings."""

    def __init__(
        self,
        backbone: Backbone,
        template: str,
        class_names: Sequence[str],
        n_ctx: int,
        ctx: torch.Tensor | None = None,
        class_position: str = "end",
    ):
        super().__init__()
        if class_position not in CLASS_POSITIONS:
            raise ValueError(f"class position must be one of {', '.join(CLASS_POSITIONS)}, not {class_position!r}")
        self.backbone = backbone
        self.template = template
        self.n_ctx = int(n_ctx)
        self.class_position = class_position
        opening = template.split("{}")[0]
        n_open = len(backbone.tokenizer.pieces(opening))
        if not 0 < self.n_ctx <= n_open:
            raise ValueError(
                f"n_ctx={n_ctx} but the template's opening {opening.strip()!r} has {n_open} word-pieces; "
                "the context may only replace pieces before the class name"
            )
        init = self._opening_embeddings()
        if ctx is None:
            ctx = init
        elif tuple(ctx.shape) != tuple(init.shape):
            raise ValueError(f"context shape {tuple(ctx.shape)} does not fit: expected {tuple(init.shape)}")
        self.ctx = nn.Parameter(ctx.detach().clone().to(device=backbone.device, dtype=init.dtype))
        self.set_classes(class_names)

    @property
    def ctx_init(self) -> str:
        """The word-pieces the context starts from, e.g. 'a frontal x - ray photo'."""
        return " ".join(self.backbone.tokenizer.pieces(self.template.split("{}")[0])[: self.n_ctx])

    @torch.no_grad()
    def _opening_embeddings(self) -> torch.Tensor:
        batch = self.backbone.tokenizer([fill_template(self.template, "x")]).to(self.backbone.device)
        return self.backbone.word_embeddings(batch.ids)[0, 1: 1 + self.n_ctx].clone()

    @torch.no_grad()
    def set_classes(self, class_names: Sequence[str]) -> None:
        """(Re)build prefix/suffix for these classes with the same ``ctx`` (base-to-novel, editing)."""
        if not class_names:
            raise ValueError("at least one class is needed")
        self.class_names = list(class_names)
        batch = self.backbone.tokenizer([fill_template(self.template, c) for c in self.class_names])
        batch = batch.to(self.backbone.device)
        emb = self.backbone.word_embeddings(batch.ids)  # [C, L, W]
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # [CLS]
        self.register_buffer("token_suffix", emb[:, 1 + self.n_ctx:].clone(), persistent=False)
        self.register_buffer("attention_mask", batch.mask.clone(), persistent=False)
        self.register_buffer("token_ids", batch.ids.clone(), persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings [C, L, W] and their attention mask [C, L]."""
        c = self.token_prefix.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(c, -1, -1)  # [C, n_ctx, W]
        if self.class_position == "middle":
            # The reference's "middle" with its class-name length of 1 (method.md section 2): the one
            # word-piece right after the context moves between its two halves. Same length, same
            # mask: only positions 1..n_ctx+1 are permuted.
            half = self.n_ctx // 2
            parts = [self.token_prefix, ctx[:, :half], self.token_suffix[:, :1], ctx[:, half:],
                     self.token_suffix[:, 1:]]
            return torch.cat(parts, dim=1), self.attention_mask
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1), self.attention_mask
