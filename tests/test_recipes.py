"""The paper's schedule and steps per epoch, the named recipes and their record in the config."""
import math
from dataclasses import replace

import pytest
import torch
from conftest import SYNTH_CLASSES, synthetic_set

from dpt_core.losses import LossWeights
from dpt_core.model import BiomedDPT
from dpt_core.prompt_bank import build_prompt_bank
from dpt_core.recipes import (
    CPU_FEWSHOT,
    CUSTOM,
    GPU_FEWSHOT,
    PAPER,
    cpu_fewshot_config,
    fewshot_config,
    gpu_fewshot_config,
    paper_config,
    recipe_of,
)
from dpt_core.teacher import build_teacher
from dpt_core.train import TrainConfig, batch_indices, fit, lr_at, steps_per_epoch


def test_paper_schedule_restarts_the_cosine_after_the_warm_up():
    cfg = paper_config()
    assert cfg.epochs == 100
    assert lr_at(cfg, 0) == 1e-5  # warm-up
    assert lr_at(cfg, 1) == 0.0025  # the cosine starts afresh at the full lr
    assert lr_at(cfg, 2) == pytest.approx(0.0025 * (1 + math.cos(math.pi / 100)) / 2, rel=1e-12)
    assert lr_at(cfg, 99) == pytest.approx(0.0025 * (1 + math.cos(math.pi * 98 / 100)) / 2, rel=1e-12)
    assert lr_at(cfg, 99) == pytest.approx(2.467e-6, rel=1e-3)
    b2n = paper_config("base2novel")
    assert b2n.epochs == 50 and lr_at(b2n, 1) == 0.0025
    assert lr_at(b2n, 49) == pytest.approx(0.0025 * (1 + math.cos(math.pi * 48 / 50)) / 2, rel=1e-12)


def test_steps_per_epoch_drops_the_last_partial_batch():
    assert steps_per_epoch(32, 4) == 8
    assert steps_per_epoch(33, 4) == 8  # the last image of the order waits for the next epoch
    assert steps_per_epoch(35, 4) == 8
    assert steps_per_epoch(4, 4) == 1
    assert steps_per_epoch(3, 4) == 1  # fewer than a batch: one step over all of them
    assert steps_per_epoch(24, 32) == 1
    with pytest.raises(ValueError):
        steps_per_epoch(0, 4)


def test_batches_are_full_or_everything():
    order = torch.tensor([5, 2, 7, 0, 1, 3, 6, 4, 8])
    assert batch_indices(order, 0, 4).tolist() == [5, 2, 7, 0]
    assert batch_indices(order, 1, 4).tolist() == [1, 3, 6, 4]
    assert batch_indices(order[:3], 0, 4).tolist() == [5, 2, 7]


@pytest.mark.parametrize("mode", ["fast", "exact"])
@pytest.mark.parametrize(("per_class", "batch", "steps", "seen"), [(3, 4, 2, 8), (1, 4, 1, 3), (3, 32, 1, 9)])
def test_fit_runs_that_many_steps_of_those_batches(tiny, monkeypatch, mode, per_class, batch, steps, seen):
    import dpt_core.train as train_mod

    sizes = []
    real = train_mod.dpt_loss
    monkeypatch.setattr(train_mod, "dpt_loss",
                        lambda logits, *a, **k: sizes.append(len(logits)) or real(logits, *a, **k))
    model = BiomedDPT(tiny, SYNTH_CLASSES, "a photo of a {}.", 4)
    teacher = build_teacher(build_prompt_bank(tiny, SYNTH_CLASSES, ["a photo of a {}."], {}), "mean")
    infos = []
    data = synthetic_set(per_class, 0)  # 3 classes x per_class images
    result = fit(model, data, teacher, TrainConfig(epochs=2, batch_size=batch, mode=mode, views=1),
                 on_step=infos.append)
    assert [i.steps_per_epoch for i in infos] == [steps] * (2 * steps)
    assert len(sizes) == 2 * steps and sum(sizes) == 2 * seen
    assert [h["lr"] for h in result.history] == [1e-5, 0.0025]


def test_recipes_are_named_in_the_config():
    weights = LossWeights(0.5, 0.1)
    assert recipe_of(paper_config(seed=3, loss_weights=weights)) == PAPER
    assert recipe_of(paper_config("base2novel")) == PAPER
    assert recipe_of(cpu_fewshot_config(seed=2, loss_weights=weights)) == CPU_FEWSHOT
    assert recipe_of(gpu_fewshot_config()) == GPU_FEWSHOT
    # any change of what the recipe fixes makes it a custom one
    assert recipe_of(replace(paper_config(), epochs=10)) == CUSTOM
    assert recipe_of(replace(paper_config(), mode="fast")) == CUSTOM
    assert recipe_of(replace(cpu_fewshot_config(), lr=0.01)) == CUSTOM
    assert recipe_of(replace(cpu_fewshot_config(), views=4)) == CUSTOM
    assert recipe_of(TrainConfig(epochs=2)) == CUSTOM
    record = paper_config().to_dict()
    assert record["recipe"] == PAPER and record["mode"] == "exact" and record["batch_size"] == 4


def test_the_default_follows_the_device():
    assert recipe_of(fewshot_config("cpu")) == CPU_FEWSHOT
    assert recipe_of(fewshot_config("cuda")) == GPU_FEWSHOT
    assert fewshot_config("cpu", seed=4).seed == 4
    assert fewshot_config("cpu").mode == "fast" and fewshot_config("cuda").epochs == 100


def test_a_checkpoint_says_which_recipe_made_it(tiny, tmp_path):
    from dpt_core.checkpoint import read_folder
    from dpt_core.workflow import save_trained, setup_classes, train_prompts

    setup = setup_classes(class_names=SYNTH_CLASSES)
    data = synthetic_set(2, 0)
    for config, name in ((cpu_fewshot_config(seed=5), CPU_FEWSHOT), (replace(paper_config(), epochs=2), CUSTOM)):
        outcome = train_prompts(tiny, setup, data, config)
        folder = save_trained(tmp_path / name, outcome, setup, config)
        training = read_folder(folder).config["training"]
        assert training["recipe"] == name and training["epochs"] == config.epochs
        assert training["batch_size"] == config.batch_size and training["mode"] == config.mode
