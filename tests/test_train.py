"""Training: frozen backbone, learning on a synthetic task, modes, reproducibility, cancel."""
import pytest
import torch
from conftest import SYNTH_CLASSES, synthetic_set

from dpt_core.evaluate import evaluate_features
from dpt_core.features import encode_images
from dpt_core.losses import LossWeights
from dpt_core.model import BiomedDPT
from dpt_core.prompt_bank import build_prompt_bank
from dpt_core.teacher import build_teacher
from dpt_core.train import TrainConfig, fit, lr_at

TEMPLATE = "a photo of a {}."


def _setup(tiny):
    model = BiomedDPT(tiny, SYNTH_CLASSES, TEMPLATE, 4)
    teacher = build_teacher(build_prompt_bank(tiny, SYNTH_CLASSES, [TEMPLATE], {}), "mean")
    return model, teacher


def test_schedule_is_warmup_then_cosine():
    cfg = TrainConfig(epochs=10)
    assert lr_at(cfg, 0) == 1e-5
    assert lr_at(cfg, 1) == pytest.approx(0.0025 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 10)).item()))
    assert lr_at(cfg, 9) < lr_at(cfg, 5) < lr_at(cfg, 1)


def test_a_step_moves_only_the_context(tiny):
    model, teacher = _setup(tiny)
    before = {k: v.clone() for k, v in tiny.clip.state_dict().items()}
    ctx0 = model.prompt_learner.ctx.detach().clone()
    fit(model, synthetic_set(2, 0), teacher, TrainConfig(epochs=2, views=1, loss_weights=LossWeights(1.0, 1.0)))
    assert not torch.equal(model.prompt_learner.ctx.detach(), ctx0)
    for k, v in tiny.clip.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in tiny.clip.parameters())
    assert not tiny.bert.training  # the dropout copy never flips the shared tower's mode


@pytest.mark.slow
def test_training_lifts_held_out_accuracy_clearly(tiny):
    model, teacher = _setup(tiny)
    train, test = synthetic_set(6, 0), synthetic_set(12, 1)
    test_feats = encode_images(model, test.images)
    before = evaluate_features(model, test_feats, test.labels, teacher.features(), LossWeights()).accuracy
    cfg = TrainConfig(epochs=10, views=4, loss_weights=LossWeights(0.5, 0.1))  # the paper's lr and batch
    result = fit(model, train, teacher, cfg)
    after = evaluate_features(model, test_feats, test.labels, teacher.features(), LossWeights()).accuracy
    assert len(result.history) == 10 and not result.stopped
    assert after >= before + 0.15, (before, after)  # measured: 0.67 -> 0.86
    assert after >= 0.8


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_same_seed_same_context(tiny, mode):
    data = synthetic_set(2, 3)
    ctxs = []
    for _ in range(2):
        model, teacher = _setup(tiny)
        fit(model, data, teacher, TrainConfig(epochs=2, views=2, mode=mode, seed=7, lr=0.05))
        ctxs.append(model.prompt_learner.ctx.detach().clone())
    assert torch.equal(ctxs[0], ctxs[1])


def test_fast_mode_caches_views_once(tiny, monkeypatch):
    import dpt_core.train as train_mod

    calls = []
    real = train_mod.encode_images
    monkeypatch.setattr(train_mod, "encode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, teacher = _setup(tiny)
    fit(model, synthetic_set(2, 0), teacher, TrainConfig(epochs=4, views=3))
    assert len(calls) == 3  # one pass per view, none per step


def test_stop_restores_the_best_completed_epoch(tiny):
    model, teacher = _setup(tiny)
    steps = []
    result = fit(model, synthetic_set(4, 0), teacher, TrainConfig(epochs=50, views=1, lr=0.05),
                 on_step=lambda info: steps.append(info), should_stop=lambda: len(steps) >= 7)
    assert result.stopped
    assert len(result.history) == 2  # 3 steps per epoch (12 images, batch 4): 2 epochs completed
    assert torch.isfinite(model.prompt_learner.ctx).all()
    assert steps[0].steps_per_epoch == 3 and steps[-1].loss["total"] > 0


def test_stop_before_anything_keeps_the_initial_context(tiny):
    model, teacher = _setup(tiny)
    ctx0 = model.prompt_learner.ctx.detach().clone()
    result = fit(model, synthetic_set(2, 0), teacher, TrainConfig(epochs=3), should_stop=lambda: True)
    assert result.stopped and result.history == []
    assert torch.equal(model.prompt_learner.ctx.detach(), ctx0)


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        TrainConfig(mode="turbo")
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)


def test_dropout_copy_shares_weights_and_trains(tiny):
    from dpt_core.text import TextEncoder

    twin = TextEncoder(tiny).with_dropout()
    assert twin.bert is not tiny.bert and twin.bert.training and not tiny.bert.training
    shared = {p.data_ptr() for p in tiny.bert.parameters()}
    assert {p.data_ptr() for p in twin.bert.parameters()} == shared


def test_center_view_reuses_the_given_features(tiny, monkeypatch):
    import dpt_core.train as train_mod

    calls = []
    real = train_mod.encode_images
    monkeypatch.setattr(train_mod, "encode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, teacher = _setup(tiny)
    data = synthetic_set(2, 0)
    feats = real(model, data.images)
    fit(model, data, teacher, TrainConfig(epochs=2, views=2, center_view=True), eval_features=feats)
    assert len(calls) == 1  # only the one augmented view was encoded
