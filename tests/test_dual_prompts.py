"""Dual prompts (journal version, our design): ranking, combination network, teachers."""
import pytest
import torch
import torch.nn.functional as F
from conftest import SYNTH_CLASSES, synthetic_set

from dpt_core.combine import CombinationNet, fit_combination
from dpt_core.descriptions import (
    DescriptionsError,
    resolve_descriptions,
    validate_descriptions,
)
from dpt_core.features import encode_images
from dpt_core.prompt_bank import Prompt, PromptBank, build_prompt_bank
from dpt_core.ranking import score_prompts, top_k_mask
from dpt_core.teacher import build_teacher, mean_weights
from dpt_core.workflow import setup_classes, zero_shot_model


def planted_bank(seed=0, dim=32, n_classes=3, per_class=6, planted_at=3):
    """Images near class directions; one prompt per class aligned with its direction, others noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    prompts, feats = [], []
    for c in range(n_classes):
        for i in range(per_class):
            source = "templates" if i < 2 else "descriptions"
            if i == planted_at:
                f = dirs[c] + 0.2 * torch.randn(dim, generator=g)
            else:
                f = 0.3 * dirs[c] + torch.randn(dim, generator=g)  # weakly related
            prompts.append(Prompt(c, source, f"class {c} prompt {i}"))
            feats.append(f)
    bank = PromptBank([f"c{c}" for c in range(n_classes)], prompts, F.normalize(torch.stack(feats), dim=-1))
    labels = torch.arange(n_classes).repeat_interleave(8)
    images = F.normalize(dirs[labels] + 0.5 * torch.randn(len(labels), dim, generator=g), dim=-1)
    return bank, images, labels


def test_ranking_puts_the_planted_prompt_first():
    bank, images, labels = planted_bank()
    scores = score_prompts(bank, images, labels)
    for c in range(bank.n_classes):
        idx = bank.indices(c)
        best = idx[int(scores[idx].argmax())]
        assert bank.prompts[best].text.endswith("prompt 3"), c


def test_top_k_keeps_k_per_source_and_class():
    bank, images, labels = planted_bank()
    keep = top_k_mask(bank, score_prompts(bank, images, labels), {"templates": 1, "descriptions": 2})
    for c in range(bank.n_classes):
        assert int(keep[bank.indices(c, "templates")].sum()) == 1
        assert int(keep[bank.indices(c, "descriptions")].sum()) == 2
        assert bool(keep[bank.indices(c)[3]])  # the planted description survives


def test_combination_weights_sum_to_one_and_move_to_the_discriminative_prompts():
    bank, images, labels = planted_bank(planted_at=3)
    scores = torch.zeros(len(bank.prompts))  # no ranking hint: the network must find them itself
    keep = torch.ones(len(bank.prompts), dtype=torch.bool)
    net = CombinationNet(bank.features.shape[1])
    planted = torch.tensor([p.text.endswith("prompt 3") for p in bank.prompts])
    w0 = net(bank.features, scores, keep, bank.class_index, bank.n_classes).detach()
    losses = fit_combination(net, bank.features, scores, keep, bank.class_index, images, labels, 30.0, steps=150)
    w1 = net(bank.features, scores, keep, bank.class_index, bank.n_classes).detach()
    for w in (w0, w1):
        sums = torch.zeros(bank.n_classes).index_add(0, bank.class_index, w)
        assert torch.allclose(sums, torch.ones(bank.n_classes), atol=1e-5)
    assert losses[-1] < losses[0]
    assert w1[planted].sum() > w0[planted].sum() + 0.3


def test_mean_teacher_is_the_v1_description_average():
    bank, _, _ = planted_bank()
    w = mean_weights(bank)
    for c in range(bank.n_classes):
        assert torch.allclose(w[bank.indices(c, "descriptions")], torch.full((4,), 0.25))
        assert float(w[bank.indices(c, "templates")].sum()) == 0.0
    t = build_teacher(bank, "mean").features()
    expected = F.normalize(bank.features[bank.indices(0, "descriptions")].mean(0), dim=-1)
    assert torch.allclose(t[0], expected, atol=1e-6)


def test_class_without_descriptions_uses_its_templates(tiny):
    bank = build_prompt_bank(tiny, ["a", "b"], ["a photo of a {}.", "an image of a {}."], {"a": ["one."]})
    w = mean_weights(bank)
    assert float(w[bank.indices(1, "templates")].sum()) == pytest.approx(1.0)


@pytest.mark.slow
def test_ranked_teacher_is_at_least_as_accurate_as_the_mean_teacher(tiny):
    setup = setup_classes(None, SYNTH_CLASSES)
    descriptions = {
        "red blotches": ["red patches cover the image.", "a scattered crimson texture.", "warm red dots everywhere.",
                         "a blue striped pattern.", "grey static."],
        "blue stripes": ["thin vertical blue lines.", "regular blue bands repeat.", "stripes of cobalt colour.",
                         "green speckles.", "a red spotted field."],
        "green noise": ["green speckled noise fills the frame.", "a grainy green texture.", "random green dots.",
                        "red squares.", "plain blue bars."],
    }
    bank = build_prompt_bank(tiny, SYNTH_CLASSES, ["a photo of a {}.", "an image of {}.", "{} texture."], descriptions)
    model = zero_shot_model(tiny, setup)
    train, test = synthetic_set(6, 0), synthetic_set(12, 1)
    f_train, f_test = encode_images(model, train.images), encode_images(model, test.images)
    tau = float(tiny.logit_scale())

    def acc(teacher):
        return float(((tau * f_test @ teacher.features().t()).argmax(1) == test.labels).float().mean())

    mean = build_teacher(bank, "mean")
    ranked = build_teacher(bank, "ranked", f_train, train.labels, tau)
    assert ranked.fit_losses and ranked.fit_losses[-1] < ranked.fit_losses[0]
    print(f"teacher accuracy: ranked {acc(ranked):.3f}, mean {acc(mean):.3f}")
    assert acc(ranked) >= acc(mean), (acc(ranked), acc(mean))


def test_ranked_without_images_ranks_by_text_agreement(tiny):
    bank = build_prompt_bank(tiny, ["glioma tumor", "normal brain"], ["a MR photo of a {} in the brain."],
                             resolve_descriptions(["glioma tumor", "normal brain"], "btmri"))
    t = build_teacher(bank, "ranked")
    assert t.scores is not None and not t.fit_losses
    sums = torch.zeros(2).index_add(0, bank.class_index, t.weights.cpu())
    assert torch.allclose(sums, torch.ones(2), atol=1e-5)
    kept = (t.weights > 0).sum().item()
    assert kept == 2 * (1 + 16)  # top-k: all (1) templates and 16 of 30 descriptions per class


def test_user_descriptions_replace_the_bank_for_named_classes():
    d = resolve_descriptions(["glioma tumor", "normal brain"], "btmri", {"Glioma_Tumor": ["my own sentence."]})
    assert d["glioma tumor"] == ["my own sentence."]
    assert len(d["normal brain"]) >= 25


@pytest.mark.parametrize("raw,match", [
    (["not", "a", "dict"], "JSON object"),
    ({"a": "one sentence"}, "list of sentences"),
    ({"a": [1, 2]}, "non-text"),
    ({"a": ["x"], "A": ["y"]}, "same class"),
    ({"": ["x"]}, "non-empty"),
])
def test_descriptions_file_validation(raw, match):
    with pytest.raises(DescriptionsError, match=match):
        validate_descriptions(raw)


def test_descriptions_are_cleaned():
    assert validate_descriptions({"a": ["  two   spaces. ", "", "Two spaces."]}) == {"a": ["two spaces."]}
