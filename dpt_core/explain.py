"""Visual explanations of the prompted image encoder: Grad-CAM and attention rollout.

The one module that wraps ``pytorch_grad_cam`` and the only one using cv2 colour maps.

Honesty rule: these maps show where the *model attends* when it scores an image
against a text feature. They are not lesion localisation, not segmentation and
not evidence of a finding; the UI must say so next to every map.

Both methods run the *prompted* forward (the model's own prompts and layout) on
the exact square view the model sees (``view_of``). Grid cells whose tokens the
``reference`` layout overwrites with prompts carry no image: they are exactly 0
in every map and drawn as a grey hatch by ``overlay``. Hooks live on the shared
backbone, so every call holds ``backbone.lock``, records only its own thread's
forward, and removes its hooks even when it fails.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision import transforms as T

from .backbone import Backbone
from .data import eval_transform
from .model import BiomedDPT
from .visual import PromptedImageEncoder

log = logging.getLogger(__name__)


@dataclass
class Explanation:
    heatmap: np.ndarray  # float32 [S, S] in [0, 1], aligned with ``view``
    view: Image.Image  # the resized, centre-cropped RGB image the model sees (not normalised)
    method: str  # "gradcam" | "rollout"
    target: str  # the class name or phrase scored; "" for rollout
    masked_cells: list[int] = field(default_factory=list)  # row-major grid cells holding prompts
    grid_size: tuple[int, int] = (14, 14)  # patch grid, to find the masked cells in the view
    faithfulness: Any = None  # a faithfulness.Faithfulness when the deletion test was asked for


def _split_eval_transform(backbone: Backbone) -> tuple[T.Compose, T.Compose]:
    """(PIL steps, tensor steps) of ``eval_transform``: derived from it, so they cannot drift apart."""
    steps = list(eval_transform(backbone).transforms)
    cut = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if cut is None:
        raise RuntimeError("eval_transform has no ToTensor step; cannot tell the view from the input")
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


def view_of(image: Image.Image, backbone: Backbone) -> Image.Image:
    """The square RGB view the model sees: eval_transform's resize + centre crop, not normalised."""
    return _split_eval_transform(backbone)[0](image.convert("RGB"))


def _frozen_encoder(model: BiomedDPT) -> PromptedImageEncoder:
    """A copy of the image encoder whose prompts are a detached buffer (same values, same layout).

    Grad-CAM backpropagates; with learnable prompts that would write ``.grad``
    into a model that may be training in another thread.
    """
    src = model.image_encoder
    enc = PromptedImageEncoder(model.backbone, dataclasses.replace(src.config, learnable=False))
    with torch.no_grad():
        enc.prompts.copy_(src.prompts.detach())
    return enc


def _input(model: BiomedDPT, image: Image.Image) -> tuple[Image.Image, torch.Tensor]:
    view_steps, tensor_steps = _split_eval_transform(model.backbone)
    view = view_steps(image.convert("RGB"))
    dtype = next(model.backbone.trunk.parameters()).dtype
    return view, tensor_steps(view).unsqueeze(0).to(model.device, dtype)


def _cell_mask(grid: tuple[int, int], masked: list[int]) -> np.ndarray:
    keep = np.ones(grid[0] * grid[1], dtype=np.float32)
    keep[masked] = 0.0
    return keep.reshape(grid)


def _to_heatmap(cells: np.ndarray, masked: list[int], size: int) -> np.ndarray:
    """Grid scores [gh, gw] -> float32 [size, size] in [0, 1], prompt cells exactly 0.

    Min-max over image cells only. Upsampling is bilinear normalised convolution
    (upsample scores*keep and keep, divide) so a prompt cell's artificial zero
    does not darken the image cells next to it.
    """
    keep = _cell_mask(cells.shape, masked)
    cells = np.nan_to_num(cells.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low = float(cells[keep > 0].min()) if keep.any() else 0.0
    cells = np.clip(cells - low, 0.0, None) * keep
    num = cv2.resize(cells, (size, size), interpolation=cv2.INTER_LINEAR)
    den = cv2.resize(keep, (size, size), interpolation=cv2.INTER_LINEAR)
    heat = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)
    heat *= cv2.resize(keep, (size, size), interpolation=cv2.INTER_NEAREST)  # whole prompt blocks -> 0
    peak = float(heat.max())
    return (heat / peak if peak > 0 else np.zeros_like(heat)).astype(np.float32)


class _GridGradCAM(GradCAM):
    """GradCAM returning the patch-grid map (``_to_heatmap`` upsamples)."""

    def __init__(self, model: nn.Module, target_layers: list[nn.Module], reshape_transform, grid: tuple[int, int]):
        super().__init__(model, target_layers, reshape_transform)
        self.grid = grid

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        return self.grid[1], self.grid[0]  # (width, height), as cv2.resize wants


class _Similarity(nn.Module):
    """What GradCAM sees: images -> cosine similarity with one text feature, [B, 1]."""

    def __init__(self, encoder: PromptedImageEncoder, text: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.trunk = encoder.backbone.trunk  # GradCAM takes the device from the first parameter
        self.register_buffer("text", F.normalize(text, dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(images), dim=-1) @ self.text.unsqueeze(-1)


def gradcam(model: BiomedDPT, image: Image.Image, text_feature: torch.Tensor, target: str = "") -> Explanation:
    """Grad-CAM of cos(image feature, ``text_feature``) [E] at the tokens entering the last block.

    That is the last point where patch tokens still reach the pooled CLS token (through the
    last attention); after it, patch tokens are discarded. The hook sits on the encoder's own
    ``tap`` module, so only public grad-cam API is used.
    """
    backbone, start = model.backbone, time.perf_counter()
    text = text_feature.detach()
    text = text[0] if text.dim() == 2 and text.shape[0] == 1 else text  # [1, E] is accepted too
    if text.dim() != 1 or text.shape[0] != backbone.embed_dim:
        raise ValueError(f"text_feature must have shape [{backbone.embed_dim}], not {tuple(text_feature.shape)}")
    grid = backbone.grid_size
    # A caller under no_grad / inference_mode (a UI handler) must not silence the backward pass,
    # so everything that enters the graph is built inside this context.
    with backbone.lock, torch.inference_mode(False), torch.enable_grad():
        encoder = _frozen_encoder(model)
        view, x = _input(model, image)
        x = x.clone().requires_grad_(True)  # the backbone is frozen: without this no gradient exists
        patches, masked = encoder.patch_slice(), encoder.masked_grid_cells()
        keep = torch.from_numpy(_cell_mask(grid, masked)).to(x.device, x.dtype)

        def reshape(tokens: torch.Tensor) -> torch.Tensor:
            # [B, T, W] -> [B, W, gh, gw] over patch tokens; prompt cells get neither weight nor activation.
            cells = tokens[:, patches]
            if cells.shape[1] != grid[0] * grid[1]:
                raise RuntimeError(f"{cells.shape[1]} patch tokens do not fill a {grid} grid")
            return cells.reshape(cells.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2) * keep

        wrapper = _Similarity(encoder, text.to(x.device, x.dtype))
        # The hook point is this call's own encoder copy (``PromptedImageEncoder.tap``): predictions
        # running meanwhile in other threads go through the shared trunk, never through it.
        with _GridGradCAM(wrapper, [encoder.tap], reshape, grid) as cam:
            try:
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])
            except IndexError as exc:  # GradCAM.__exit__ swallows IndexError (printing it): keep it an error
                raise RuntimeError(f"Grad-CAM failed: {exc}") from exc
    heat = _to_heatmap(maps[0], masked, backbone.image_size)
    log.debug("gradcam %r in %.3fs", target, time.perf_counter() - start)
    return Explanation(heat, view, "gradcam", target, list(masked), tuple(grid))


def _attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) averaged over heads, [B, N, N]: timm's fused attention never forms it."""
    B, N, C = x.shape
    head_dim = getattr(attn, "head_dim", C // attn.num_heads)
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)


def attention_rollout(model: BiomedDPT, image: Image.Image, discard_ratio: float = 0.0) -> Explanation:
    """Attention rollout (Abnar & Zuidema 2020) of the CLS token through the prompted forward.

    Per block: head-averaged attention, optionally the lowest ``discard_ratio`` of
    each row dropped (the CLS column kept), plus identity, rows renormalised; the
    product over blocks says how much each input token flows into CLS. Prompt
    tokens are rewritten before every block, so their rows are reset to themselves
    there: attention they absorb (the sink) never flows back to the image.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {discard_ratio}")
    backbone, start = model.backbone, time.perf_counter()
    blocks, grid = backbone.trunk.blocks, backbone.grid_size
    encoder = _frozen_encoder(model)
    view, x = _input(model, image)
    owner, probs = threading.get_ident(), []

    def capture(module: nn.Module, args: tuple) -> None:
        if threading.get_ident() == owner:  # other threads' forwards through the shared trunk are not ours
            probs.append(_attention_probs(module, args[0]).float())

    with backbone.lock:
        handles = []
        try:  # the prompted forward: prompt tokens act as attention sinks, as in prediction
            handles.extend(blk.attn.register_forward_pre_hook(capture) for blk in blocks)
            with torch.no_grad():
                encoder.forward_tokens(x)
        finally:
            for h in handles:
                h.remove()
    if len(probs) != len(blocks):
        raise RuntimeError(f"captured {len(probs)} attention maps for {len(blocks)} blocks")

    eye = torch.eye(probs[0].shape[-1], device=probs[0].device)
    prompt_rows = encoder.prompt_positions()
    rollout = eye.expand_as(probs[0]).clone()
    for a in probs:
        if discard_ratio > 0:
            low = a.topk(int(a.shape[-1] * discard_ratio), dim=-1, largest=False).indices
            a = torch.cat([a[..., :1], a.scatter(-1, low, 0.0)[..., 1:]], dim=-1)  # CLS column kept
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout[:, prompt_rows] = eye[prompt_rows]  # prompts are rewritten here: they carry no image
        rollout = a @ rollout
    cls = rollout[0, 0, encoder.patch_slice()].cpu().numpy()
    if cls.size != grid[0] * grid[1]:
        raise RuntimeError(f"{cls.size} patch tokens do not fill a {grid} grid")
    masked = encoder.masked_grid_cells()
    heat = _to_heatmap(cls.reshape(grid), masked, backbone.image_size)
    log.debug("rollout in %.3fs", time.perf_counter() - start)
    return Explanation(heat, view, "rollout", "", list(masked), tuple(grid))


def overlay(expl: Explanation, alpha: float = 0.45, colormap: str = "jet") -> Image.Image:
    """The heat map coloured by cv2 and blended over the view with opacity ``alpha``.

    Prompt cells are painted as a grey diagonal hatch: visibly "not image", not "cold".
    """
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
    if code is None:
        raise ValueError(f"unknown colormap {colormap!r}")
    base = np.asarray(expl.view.convert("RGB"), dtype=np.float32)
    h, w = base.shape[:2]
    heat = expl.heatmap if expl.heatmap.shape == (h, w) else cv2.resize(expl.heatmap, (w, h))
    colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), code), cv2.COLOR_BGR2RGB)
    out = (1.0 - alpha) * base + alpha * colour.astype(np.float32)
    if expl.masked_cells:
        keep = _cell_mask(expl.grid_size, expl.masked_cells)
        hidden = cv2.resize(keep, (w, h), interpolation=cv2.INTER_NEAREST) == 0
        yy, xx = np.mgrid[:h, :w]
        out[hidden] = 160.0  # flat mid grey ...
        out[hidden & ((xx + yy) % 6 < 2)] = 90.0  # ... with darker diagonal stripes
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
