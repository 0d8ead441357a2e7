"""The deletion test: a map that points at the evidence beats random order; one pointing elsewhere does not."""
import numpy as np
import pytest
import torch
from conftest import SYNTH_CLASSES, synthetic_image

from dpt_core.faithfulness import (
    DEFAULT_STEPS,
    auc,
    cell_scores,
    deletion_batch,
    deletion_test,
    faithfulness,
)

GRID = (14, 14)
PATCH = 16


def quadrant_cells(rows: range, cols: range) -> list[int]:
    return [r * GRID[1] + c for r in rows for c in cols]


def evidence_model(x: torch.Tensor) -> torch.Tensor:
    """A model whose only evidence is the top-left 7x7 cells: P(target) rises with their brightness."""
    return torch.sigmoid(8.0 * x[:, :, : 7 * PATCH, : 7 * PATCH].mean(dim=(1, 2, 3)) - 2.0)


@pytest.fixture
def bright_top_left():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, GRID[0] * PATCH, GRID[1] * PATCH, generator=gen) * 0.3
    x[:, :, : 7 * PATCH, : 7 * PATCH] += 1.0  # the evidence
    return x


def map_on(cells: list[int]) -> np.ndarray:
    scores = np.zeros(GRID[0] * GRID[1])
    scores[cells] = 1.0 + np.linspace(0, 0.1, len(cells))
    return scores


def map_towards(row: float, col: float) -> np.ndarray:
    """A smooth map peaking at grid cell (row, col), falling with distance (as real maps do)."""
    r, c = np.mgrid[: GRID[0], : GRID[1]]
    return -np.hypot(r - row, c - col).reshape(-1)


def test_map_on_the_evidence_beats_random_and_a_map_elsewhere_does_not(bright_top_left):
    right = map_towards(3, 3)  # the evidence's centre
    wrong = map_towards(13, 13)  # the opposite corner
    for steps in (DEFAULT_STEPS, 8):
        on = deletion_test(evidence_model, bright_top_left, right, [], GRID, steps)
        off = deletion_test(evidence_model, bright_top_left, wrong, [], GRID, steps)
        assert on.deletion_auc < on.random_auc - 0.05, on
        assert off.deletion_auc >= off.random_auc, off
        assert on.random_auc == off.random_auc  # same seed, same random order
        assert on.curve[0] == pytest.approx(on.random_curve[0]) and on.curve[-1] == pytest.approx(on.random_curve[-1])


def test_one_batched_forward_of_two_times_steps_images(bright_top_left):
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return evidence_model(x)

    result = deletion_test(counting, bright_top_left, map_on([0, 1, 2]), [], GRID)
    assert calls == [2 * DEFAULT_STEPS] == [8]  # intact + 3 + 3 + all deleted
    assert len(result.curve) == len(result.random_curve) == DEFAULT_STEPS + 1
    assert set(result.to_json()) == {"deletion_auc", "random_auc", "steps"}
    assert "deletion AUC" in result.describe() and "random order" in result.describe()


def test_prompt_cells_are_never_deleted(bright_top_left):
    masked = [0, 1, 2, 3]
    cells = [i for i in range(196) if i not in masked]
    batch = deletion_batch(bright_top_left, [cells, cells[::-1]], 4, GRID, fill=0.0)
    assert batch.shape[0] == 8
    top_row_prompts = bright_top_left[0, :, :PATCH, : 4 * PATCH]
    assert torch.equal(batch[-1, :, :PATCH, : 4 * PATCH], top_row_prompts)  # untouched even when "all" is deleted
    assert float(batch[-1, :, PATCH:, :].abs().sum()) == 0.0  # every image cell below is deleted
    with pytest.raises(ValueError, match="steps"):
        deletion_test(evidence_model, bright_top_left, map_on([5]), masked, GRID, steps=1)


def test_cell_scores_and_auc():
    heat = np.zeros((224, 224), dtype=np.float32)
    heat[:16, 16:32] = 1.0
    s = cell_scores(heat, GRID)
    assert s.shape == (196,) and s[1] == 1.0 and s.sum() == 1.0
    assert auc([1.0, 1.0, 1.0]) == 1.0 and auc([1.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_on_the_tiny_model_with_its_own_gradcam(tiny):
    from dpt_core.explain import gradcam
    from dpt_core.model import BiomedDPT

    model = BiomedDPT(tiny, SYNTH_CLASSES, "a photo of a {}.", 4).eval()
    image = synthetic_image(1, np.random.default_rng(3))
    with torch.no_grad():
        text = model.encode_prompts()
    expl = gradcam(model, image, text[1], SYNTH_CLASSES[1])
    result = faithfulness(model, image, expl.heatmap, expl.masked_cells, 1, text)
    assert 0.0 <= result.deletion_auc <= 1.0 and 0.0 <= result.random_auc <= 1.0
    assert result.steps == DEFAULT_STEPS and all(np.isfinite(result.curve))
    with torch.no_grad():
        p = torch.softmax(model(images=_eval(tiny, image)).logits, -1)[0, 1]
    assert result.curve[0] == pytest.approx(float(p), abs=1e-4)  # the intact image is the model's own prediction
    with pytest.raises(ValueError, match="target"):
        faithfulness(model, image, expl.heatmap, expl.masked_cells, 5, text)


def _eval(backbone, image):
    from dpt_core.data import eval_transform

    return eval_transform(backbone)(image.convert("RGB")).unsqueeze(0)
