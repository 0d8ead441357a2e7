"""Image side of Biomed-DPT: zero visual prompts inside the frozen timm ViT (method.md section 3).

The trunk is run stage by stage (timm's own ``patch_embed``, ``_pos_embed``,
``norm_pre``, ``blocks``, ``norm``, ``forward_head``) and the prompt tokens are
(re)written before every block:

- ``reference`` (default): positions 1..n are *overwritten*, as the released
  code does, so the sequence stays 197 long and the first n patches of the top
  row are discarded. Checkpoints trained by the reference see the same features.
- ``insert``: n tokens are inserted after CLS (201 tokens), no patch is lost.

With zero prompts, LayerNorm(0) = beta, so each prompt token is a constant
key/value in every block: a fixed attention sink that damps attention to patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backbone import Backbone

LAYOUTS = ("reference", "insert")


@dataclass(frozen=True)
class VisualPromptConfig:
    n_prompts: int = 4  # prompt tokens (the paper: 4)
    layout: str = "reference"  # "reference" (overwrite 1..n, 197 tokens) or "insert" (201 tokens)
    learnable: bool = False  # the reference keeps them fixed at zero (never trained, never saved)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"visual prompt layout must be one of {LAYOUTS}, not {self.layout!r}")
        if self.n_prompts < 0:
            raise ValueError("n_prompts must be >= 0")


class PromptedImageEncoder(nn.Module):
    """Projected (not normalised) image features of the frozen trunk with visual prompts."""

    def __init__(self, backbone: Backbone, config: VisualPromptConfig = VisualPromptConfig()):
        super().__init__()
        self.backbone = backbone  # a dataclass, not a module: the shared weights are not our state
        self.config = config
        zeros = torch.zeros(config.n_prompts, backbone.vision_width, device=backbone.device)
        if config.learnable:
            self.prompts = nn.Parameter(zeros)
        else:
            self.register_buffer("prompts", zeros, persistent=False)
        # The hook point of explanations: the token sequence entering the last block, the last point
        # where patch tokens still reach the pooled CLS token. A module of this encoder, not of the
        # shared trunk, so Grad-CAM's hooks see only the forwards of the encoder it was given.
        self.tap = nn.Identity()

    @property
    def n_prompts(self) -> int:
        return self.config.n_prompts

    def prompt_positions(self) -> list[int]:
        """Sequence positions that hold prompts (CLS is 0 in both layouts)."""
        return list(range(1, 1 + self.n_prompts))

    def patch_slice(self) -> slice:
        """Where the 14x14 patch tokens sit in the sequence (in ``reference``, 4 of them are prompts)."""
        return slice(1, None) if self.config.layout == "reference" else slice(1 + self.n_prompts, None)

    def masked_grid_cells(self) -> list[int]:
        """Patch-grid cells (row-major) that carry no image: the overwritten ones in ``reference``."""
        return list(range(self.n_prompts)) if self.config.layout == "reference" else []

    def _with_prompts(self, x: torch.Tensor, insert: bool) -> torch.Tensor:
        if self.n_prompts == 0:
            return x
        p = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        tail = x[:, 1:] if insert else x[:, 1 + self.n_prompts:]
        return torch.cat([x[:, :1], p, tail], dim=1)  # out of place: autograd and hooks stay sound

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Token sequence after the trunk's final norm: [B, T, W]."""
        t = self.backbone.trunk
        x = t.patch_embed(images)
        x = t._pos_embed(x)  # prepends CLS, adds the position embedding
        x = t.patch_drop(x)
        x = t.norm_pre(x)
        if self.config.layout == "insert":
            x = self._with_prompts(x, insert=True)
        last = len(t.blocks) - 1
        for i, block in enumerate(t.blocks):
            x = self._with_prompts(x, insert=False)  # deep prompts: reset before every block
            x = block(self.tap(x) if i == last else x)
        return t.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(images)
        pooled = self.backbone.trunk.forward_head(tokens)  # BiomedCLIP pools on CLS ("token")
        return self.backbone.visual_proj(pooled)  # [B, E]
