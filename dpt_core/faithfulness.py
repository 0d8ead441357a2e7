"""How far an attention map can be trusted: the deletion test.

Image patches are replaced by the mean colour (0 after normalisation) in the
order the map ranks them, most attended first, and the target's probability is
read after each step; the same is done in a random order. The area under each
curve (fractions deleted 0 ... 1 on the x axis) is reported: a map that points at
what the model uses makes the probability fall early, so its deletion AUC is
lower than the random order's (Petsiuk et al. 2018, "RISE", deletion metric).

Cost: with ``steps`` S, the curves share the intact and the fully deleted image,
so one batched forward of 2·S images is run (8 at the default S = 4). Grid cells
that hold prompt tokens (``reference`` layout) carry no image: they are never
ranked or deleted.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import eval_transform
from .losses import scaled_logits
from .model import BiomedDPT

DEFAULT_STEPS = 4  # 2 * 4 = 8 extra forwards
MAX_STEPS = 16


@dataclass(frozen=True)
class Faithfulness:
    deletion_auc: float  # map order, most attended first
    random_auc: float  # one random order (seeded)
    steps: int
    curve: list[float]  # target probability after deleting 0, 1/S, ..., 1 of the image cells (map order)
    random_curve: list[float]

    def to_json(self) -> dict:
        return {"deletion_auc": round(self.deletion_auc, 4), "random_auc": round(self.random_auc, 4),
                "steps": self.steps}

    def describe(self) -> str:
        """The one line shown under the overlay."""
        return (f"deletion AUC {self.deletion_auc:.2f} vs {self.random_auc:.2f} for random order "
                "— lower means the map points at what the model uses")


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from 2 to {MAX_STEPS}, not {steps!r}")
    return steps


def cell_scores(heatmap: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Mean of a square heat map [S, S] over each patch cell: [gh * gw], row-major."""
    gh, gw = grid
    h, w = heatmap.shape
    if h % gh or w % gw:
        raise ValueError(f"a {h}x{w} map does not split into a {gh}x{gw} grid")
    return heatmap.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3)).reshape(-1).astype(np.float64)


def auc(curve: Sequence[float]) -> float:
    """Trapezoid area under a curve sampled at evenly spaced fractions of [0, 1]."""
    y = np.asarray(curve, dtype=np.float64)
    return float(((y[1:] + y[:-1]) / 2.0).mean())


def deletion_batch(x: torch.Tensor, orders: Sequence[Sequence[int]], steps: int, grid: tuple[int, int],
                   fill: float = 0.0) -> torch.Tensor:
    """The images the test scores: [intact, per order its S-1 partial deletions, all deleted].

    ``x`` [1, 3, H, W] normalised; each order lists the image cells to delete, first first.
    All orders hold the same cells, so "all deleted" is one image for every order.
    """
    gh, gw = grid
    ph, pw = x.shape[-2] // gh, x.shape[-1] // gw
    n = len(orders[0])
    out = [x[0]]
    for order in orders:
        for k in range(1, steps):
            out.append(_delete(x[0], order[: round(n * k / steps)], gw, ph, pw, fill))
    out.append(_delete(x[0], orders[0], gw, ph, pw, fill))
    return torch.stack(out)


def _delete(img: torch.Tensor, cells: Sequence[int], gw: int, ph: int, pw: int, fill: float) -> torch.Tensor:
    img = img.clone()
    for cell in cells:
        r, c = divmod(int(cell), gw)
        img[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = fill
    return img


def deletion_test(
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scores: np.ndarray,
    masked: Sequence[int],
    grid: tuple[int, int],
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> Faithfulness:
    """The deletion test for any ``score`` (images [B, 3, H, W] -> target probability [B]).

    ``scores`` [gh * gw]: the map's value per cell; ``masked``: prompt cells, left alone.
    """
    steps = check_steps(steps)
    hidden = {int(m) for m in masked}
    cells = np.array([i for i in range(grid[0] * grid[1]) if i not in hidden])
    if len(cells) < steps:
        raise ValueError(f"{len(cells)} image cells cannot be deleted in {steps} steps")
    by_map = cells[np.argsort(-scores[cells], kind="stable")]  # most attended first; ties keep grid order
    rng = np.random.default_rng(seed)
    by_chance = cells[rng.permutation(len(cells))]
    batch = deletion_batch(x, [by_map.tolist(), by_chance.tolist()], steps, grid)
    with torch.no_grad():
        p = score(batch).detach().float().cpu().tolist()  # one batched forward
    intact, last = p[0], p[-1]
    curve = [intact, *p[1:steps], last]
    random_curve = [intact, *p[steps:2 * steps - 1], last]
    return Faithfulness(auc(curve), auc(random_curve), steps, curve, random_curve)


def faithfulness(
    model: BiomedDPT,
    image: Image.Image,
    heatmap: np.ndarray,
    masked_cells: Sequence[int],
    target: int | None,
    class_features: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> Faithfulness:
    """The deletion test of a map (an ``explain.Explanation``'s heat map and masked cells) on ``model``.

    The curve is the softmax probability of row ``target`` of ``class_features`` [K, E]
    (the class text features, with a typed phrase appended as an extra row when
    the map was made for a phrase), at the backbone's logit scale; ``target``
    None: the class the intact image is predicted as (for a rollout map).
    """
    backbone = model.backbone
    grid = tuple(backbone.grid_size)
    if target is not None and not 0 <= target < class_features.shape[0]:
        raise ValueError(f"target {target} is not a row of the {class_features.shape[0]} class features")
    dtype = next(backbone.trunk.parameters()).dtype
    x = eval_transform(backbone)(image.convert("RGB")).unsqueeze(0).to(backbone.device, dtype)
    text = F.normalize(class_features.to(backbone.device).float(), dim=-1)
    tau = float(backbone.logit_scale())

    def score(batch: torch.Tensor) -> torch.Tensor:
        feats = model.encode_image(batch).float()
        probs = torch.softmax(scaled_logits(feats, text, tau), dim=-1)  # [B, K]; row 0 is the intact image
        return probs[:, int(probs[0].argmax()) if target is None else target]

    return deletion_test(score, x, cell_scores(heatmap, grid), masked_cells, grid, steps, seed)


def explanation_faithfulness(model: BiomedDPT, image: Image.Image, explanation, class_features: torch.Tensor,
                             class_names: Sequence[str], phrase_feature: torch.Tensor | None = None,
                             steps: int = DEFAULT_STEPS) -> Faithfulness:
    """The deletion test of an ``explain.Explanation``, scored on what its map was made for.

    A Grad-CAM map of a class: that class's probability; of a phrase (``phrase_feature``
    [E] given): the phrase's probability among the classes and the phrase; a rollout
    map (no target): the probability of the predicted class.
    """
    features = class_features
    if phrase_feature is not None:
        features = torch.cat([class_features, phrase_feature.view(1, -1).to(class_features.device)])
        target: int | None = len(class_names)
    elif explanation.target in class_names:
        target = list(class_names).index(explanation.target)
    else:
        target = None
    return faithfulness(model, image, explanation.heatmap, explanation.masked_cells, target, features, steps)
