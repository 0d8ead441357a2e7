"""Batched image feature extraction through the prompted image encoder (no gradient)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image

from .data import eval_transform
from .model import BiomedDPT


@torch.no_grad()
def encode_images(
    model: BiomedDPT,
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    batch_size: int = 16,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Normalised image features [N, E] (eval preprocessing unless ``transform`` is given)."""
    transform = transform or eval_transform(model.backbone)
    out = []
    for i in range(0, len(images), batch_size):
        if should_stop is not None and should_stop():
            raise InterruptedError("stopped")
        batch = torch.stack([transform(im) for im in images[i:i + batch_size]]).to(model.device)
        out.append(model.encode_image(batch).float())
    if not out:
        return torch.zeros(0, model.backbone.embed_dim, device=model.device)
    return torch.cat(out)
