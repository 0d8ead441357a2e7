"""The Biomed-DPT model: prompted image encoder + prompt learner + frozen text tower.

Inference (v1): logits = tau * f t^T with the learned prompt only. The teacher
and the prompt bank explain and regularise; they never change the prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .losses import scaled_logits
from .text import PromptLearner, TextEncoder
from .visual import PromptedImageEncoder, VisualPromptConfig


@dataclass
class DPTOutput:
    logits: torch.Tensor  # [B, C], already multiplied by tau
    image_features: torch.Tensor  # [B, E], L2-normalised
    text_features: torch.Tensor  # [C, E], L2-normalised


class BiomedDPT(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        class_names: Sequence[str],
        template: str,
        n_ctx: int,
        visual: VisualPromptConfig = VisualPromptConfig(),
        ctx: torch.Tensor | None = None,
        class_position: str = "end",
    ):
        super().__init__()
        self.backbone = backbone
        self.image_encoder = PromptedImageEncoder(backbone, visual)
        self.prompt_learner = PromptLearner(backbone, template, class_names, n_ctx, ctx, class_position)
        self.text_encoder = TextEncoder(backbone)

    @property
    def class_names(self) -> list[str]:
        return self.prompt_learner.class_names

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def logit_scale(self) -> torch.Tensor:
        return self.backbone.logit_scale()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_prompts(self, text_encoder: TextEncoder | None = None) -> torch.Tensor:
        """Student text features, one per class: [C, E], normalised."""
        embeds, mask = self.prompt_learner()
        feats = (text_encoder or self.text_encoder).forward_embeddings(embeds, mask)
        return F.normalize(feats, dim=-1)

    def forward(
        self,
        images: torch.Tensor | None = None,
        *,
        image_features: torch.Tensor | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> DPTOutput:
        """Either ``images`` [B, 3, H, W] or cached normalised ``image_features`` [B, E]."""
        if image_features is None:
            if images is None:
                raise ValueError("pass images or image_features")
            image_features = self.encode_image(images)
        text_features = self.encode_prompts(text_encoder)
        logits = scaled_logits(image_features, text_features, self.logit_scale())
        return DPTOutput(logits=logits, image_features=image_features, text_features=text_features)
