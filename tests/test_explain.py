"""Grad-CAM and attention rollout on the tiny backbone: valid maps, masked prompt cells, no leaked hooks,
frozen weights untouched, thread safety, overlay. Offline, CPU, a few seconds."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from dpt_core.backbone import load_backbone
from dpt_core.data import eval_transform
from dpt_core.explain import Explanation, attention_rollout, gradcam, overlay, view_of
from dpt_core.model import BiomedDPT
from dpt_core.prompt_bank import encode_cached
from dpt_core.visual import VisualPromptConfig

CLASSES = ["a", "b"]
TEMPLATE = "a photo of a {}."
# On the random tiny model this phrase gives a Grad-CAM with positive evidence (not all-zero after ReLU).
PHRASE = "a photo of a a."
# Full backward hooks live in ``_backward_hooks`` too (flagged by ``_is_full_backward_hook``).
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny", "cpu")


def make_model(backbone, **visual) -> BiomedDPT:
    return BiomedDPT(backbone, CLASSES, TEMPLATE, 4, VisualPromptConfig(**visual))


@pytest.fixture(scope="module")
def model(backbone):
    return make_model(backbone)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    arr = np.full((260, 300, 3), 30, dtype=np.uint8)  # non-square: exercises resize + centre crop
    arr[80:160, 120:200] = 230  # a bright square
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def text(backbone) -> torch.Tensor:
    return encode_cached(backbone, [PHRASE])[0]


def hooks_left(backbone) -> list[str]:
    left = []
    for name, module in backbone.clip.named_modules():
        for attr in HOOK_DICTS:
            if getattr(module, attr, None):
                left.append(f"{name or '<clip>'}.{attr}")
    from torch.nn.modules import module as torch_module

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(torch_module, attr, None):
            left.append(f"torch global {attr}")
    return left


def check_map(expl: Explanation, method: str, masked: list[int]) -> None:
    h = expl.heatmap
    assert expl.method == method
    assert h.shape == (224, 224) and h.dtype == np.float32
    assert np.isfinite(h).all() and h.min() >= 0.0 and h.max() <= 1.0
    assert h.max() == pytest.approx(1.0) and h.std() > 0  # not constant, not all zero
    assert expl.view.size == (224, 224) and expl.view.mode == "RGB"
    assert expl.masked_cells == masked
    for cell in masked:  # each masked cell's 16x16 pixel block is exactly zero
        r, c = divmod(cell, 14)
        assert np.all(h[16 * r:16 * (r + 1), 16 * c:16 * (c + 1)] == 0.0)
    keep = np.ones((224, 224), bool)
    for cell in masked:
        r, c = divmod(cell, 14)
        keep[16 * r:16 * (r + 1), 16 * c:16 * (c + 1)] = False
    assert h[keep].max() == pytest.approx(1.0)  # the image part carries the map


def check_backbone_clean(backbone) -> None:
    assert hooks_left(backbone) == []
    for name, p in backbone.clip.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name


def test_gradcam_map(model, image, text, backbone):
    expl = gradcam(model, image, text, target="a")
    check_map(expl, "gradcam", [0, 1, 2, 3])
    assert expl.target == "a"
    check_backbone_clean(backbone)


def test_gradcam_depends_on_target(model, image, backbone):
    feats = encode_cached(backbone, [PHRASE, "b"])
    a, b = (gradcam(model, image, f).heatmap for f in feats)
    assert np.abs(a - b).max() > 0.05


def test_gradcam_accepts_row_vector_and_rejects_bad_shapes(model, image, text, backbone):
    row = gradcam(model, image, text[None]).heatmap
    np.testing.assert_allclose(row, gradcam(model, image, text).heatmap, atol=1e-6)
    for bad in (text[:-1], torch.stack([text, text]), text[None, None]):
        with pytest.raises(ValueError, match="text_feature"):
            gradcam(model, image, bad)
    check_backbone_clean(backbone)


def test_rollout_map(model, image, backbone):
    expl = attention_rollout(model, image)
    check_map(expl, "rollout", [0, 1, 2, 3])
    assert expl.target == ""
    check_backbone_clean(backbone)
    dropped = attention_rollout(model, image, discard_ratio=0.5)
    check_map(dropped, "rollout", [0, 1, 2, 3])
    assert np.abs(dropped.heatmap - expl.heatmap).max() > 0
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError):
            attention_rollout(model, image, discard_ratio=bad)


def _raise(*_args):
    raise RuntimeError("boom inside the forward")


def test_hooks_released_after_errors_inside(model, image, text, backbone):
    # Raise after the explanation's hooks are registered: the projection head runs after the last block,
    # the final norm after every attention.
    for module, call in ((backbone.visual_proj, lambda: gradcam(model, image, text)),
                         (backbone.trunk.norm, lambda: attention_rollout(model, image))):
        handle = module.register_forward_pre_hook(_raise)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                call()
        finally:
            handle.remove()
        check_backbone_clean(backbone)
        assert not backbone.lock.locked()
    check_map(gradcam(model, image, text), "gradcam", [0, 1, 2, 3])  # still usable afterwards


def test_insert_layout_has_no_masked_cells(backbone, image, text):
    model = make_model(backbone, layout="insert")
    check_map(gradcam(model, image, text), "gradcam", [])
    check_map(attention_rollout(model, image), "rollout", [])
    check_backbone_clean(backbone)


def test_prompt_sink_changes_rollout(backbone, image):
    # insert layout: both models see all 196 patches, so any difference is the prompts' attention sink.
    with_prompts = attention_rollout(make_model(backbone, layout="insert", n_prompts=4), image).heatmap
    without = attention_rollout(make_model(backbone, layout="insert", n_prompts=0), image).heatmap
    assert np.abs(with_prompts - without).max() > 1e-3
    # reference layout: n_prompts=0 masks nothing, and the image cells differ too.
    ref4 = attention_rollout(make_model(backbone, n_prompts=4), image).heatmap
    ref0 = attention_rollout(make_model(backbone, n_prompts=0), image)
    assert ref0.masked_cells == []
    assert np.abs(ref4[16:] - ref0.heatmap[16:]).max() > 1e-3


def test_works_under_no_grad_and_inference_mode(model, image, text, backbone):
    expected = gradcam(model, image, text).heatmap
    with torch.no_grad():
        np.testing.assert_allclose(gradcam(model, image, text).heatmap, expected, atol=1e-6)
    with torch.inference_mode():
        np.testing.assert_allclose(gradcam(model, image, text).heatmap, expected, atol=1e-6)
        check_map(attention_rollout(model, image), "rollout", [0, 1, 2, 3])
    check_backbone_clean(backbone)


def test_learnable_prompts_get_no_grad(backbone, image, text):
    model = make_model(backbone, learnable=True)
    gradcam(model, image, text)
    assert model.image_encoder.prompts.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_concurrent_calls_match_sequential(model, image, text, backbone):
    expected = {"gradcam": gradcam(model, image, text).heatmap, "rollout": attention_rollout(model, image).heatmap}
    results: dict[str, list[np.ndarray]] = {"gradcam": [], "rollout": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)
    stop = threading.Event()

    def run(name, fn):
        try:
            barrier.wait()
            for _ in range(3):
                results[name].append(fn().heatmap)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    def plain_predictions():  # forwards that hold no lock pass the hooks: they must not be recorded
        barrier.wait()
        with torch.no_grad():
            while not stop.is_set():
                model.encode_image(torch.randn(1, 3, 224, 224))

    threads = [threading.Thread(target=run, args=("gradcam", lambda: gradcam(model, image, text))),
               threading.Thread(target=run, args=("rollout", lambda: attention_rollout(model, image)))]
    noise = threading.Thread(target=plain_predictions)
    for t in threads + [noise]:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    noise.join(timeout=30)
    assert not errors, errors
    for name, maps in results.items():
        assert len(maps) == 3
        for m in maps:
            np.testing.assert_allclose(m, expected[name], atol=1e-5)
    check_backbone_clean(backbone)


def test_view_of_matches_eval_transform(backbone, image):
    view = view_of(image, backbone)
    assert view.size == (224, 224) and view.mode == "RGB"
    from torchvision import transforms as T

    tensor = T.Normalize(backbone.mean, backbone.std)(T.ToTensor()(view))
    assert torch.equal(tensor, eval_transform(backbone)(image))
    assert view_of(image.convert("L"), backbone).mode == "RGB"


def test_overlay(model, image, text):
    expl = gradcam(model, image, text)
    out = overlay(expl)
    assert out.mode == "RGB" and out.size == expl.view.size
    arr = np.asarray(out)
    grey = arr[:16, :64]  # the masked prompt cells: grey hatch whatever the heat map or image
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    assert set(np.unique(grey)) == {90, 160}
    assert np.array_equal(np.asarray(overlay(expl, alpha=0.0))[16:], np.asarray(expl.view)[16:])
    assert overlay(expl, alpha=1.0, colormap="viridis").size == (224, 224)
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            overlay(expl, alpha=bad)
    with pytest.raises(ValueError, match="colormap"):
        overlay(expl, colormap="no-such-map")
    insert = attention_rollout(make_model(model.backbone, layout="insert"), image)
    assert np.asarray(overlay(insert)).shape == (224, 224, 3)
