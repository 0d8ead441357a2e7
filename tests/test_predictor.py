"""Prediction API: learned-prompt logits, per-source probabilities, per-prompt contributions."""
import pytest
import torch
from conftest import SYNTH_CLASSES, synthetic_set

from dpt_core.checkpoint import read_folder
from dpt_core.losses import LossWeights
from dpt_core.predictor import Predictor, check_class_names
from dpt_core.prompt_bank import SOURCES
from dpt_core.train import TrainConfig
from dpt_core.workflow import save_trained, setup_classes, train_prompts


def _predictor(tiny, **kw):
    s = setup_classes("btmri")
    return Predictor(tiny, s.class_names, s.templates, s.descriptions, s.template, s.n_ctx, **kw), s


def test_contributions_add_up_to_the_source_logits(tiny):
    pred, _ = _predictor(tiny)
    out = pred.predict(synthetic_set(1, 0).images[:2])
    for r in out:
        assert abs(sum(r.probs.values()) - 1) < 1e-5
        assert r.sources["learned"] == r.probs
        for s in SOURCES:
            for c, name in enumerate(r.class_names):
                total = sum(p.contribution for p in r.prompts if p.class_name == name and p.source == s)
                assert total == pytest.approx(r.source_logits[s][c], rel=1e-4, abs=1e-4)
                weights = [p.weight for p in r.prompts if p.class_name == name and p.source == s]
                assert sum(weights) == pytest.approx(1.0, abs=1e-5)


def test_prediction_is_the_learned_prompt(tiny):
    pred, _ = _predictor(tiny)
    img = synthetic_set(1, 0).images[0]
    r = pred.predict([img])[0]
    feats = pred.image_features([img])
    logits = tiny.logit_scale() * feats @ pred.model.encode_prompts().t()
    assert torch.allclose(torch.tensor(r.logits), logits[0], atol=1e-4)
    assert r.prediction == r.class_names[int(logits.argmax())]
    j = r.to_json(top_k=5)
    assert set(j) == {"prediction", "probs", "logits", "calibrated_probs", "prediction_set", "contributions"}
    assert j["calibrated_probs"] is None and j["prediction_set"] is None  # no checkpoint: not calibrated
    assert len(j["contributions"]["prompts"]) == 5
    assert all(p["class"] == r.prediction for p in j["contributions"]["prompts"])
    c = [p["contribution"] for p in j["contributions"]["prompts"]]
    assert c == sorted(c, reverse=True)


def test_editing_one_description_encodes_only_that_sentence(tiny):
    s = setup_classes("btmri")
    Predictor(tiny, s.class_names, s.templates, s.descriptions, s.template, s.n_ctx)
    before = len(tiny.text_cache)
    edited = dict(s.descriptions)
    edited["glioma tumor"] = edited["glioma tumor"][:-1] + ["An entirely new sentence about a glioma."]
    Predictor(tiny, s.class_names, s.templates, edited, s.template, s.n_ctx)
    assert len(tiny.text_cache) == before + 1


def test_missing_descriptions_leave_that_source_out(tiny):
    p = Predictor(tiny, ["a", "b"], ["a photo of a {}."], {"a": ["x y z."]}, "a photo of a {}.", 4)
    r = p.predict(synthetic_set(1, 0).images[:1])[0]
    assert r.sources["descriptions"] is None and r.sources["templates"] is not None


@pytest.mark.parametrize("names,match", [([], "two"), (["one"], "two"), (["a", "A"], "duplicate"),
                                          (["a", " "], "empty"), ([str(i) for i in range(101)], "at most")])
def test_class_list_validation(names, match):
    with pytest.raises(ValueError, match=match):
        check_class_names(names)


def test_hundred_classes_work(tiny):
    names = [f"class {i}" for i in range(100)]
    p = Predictor(tiny, names, ["a photo of a {}."], {}, "a photo of a {}.", 4)
    r = p.predict(synthetic_set(1, 0).images[:1])[0]
    assert len(r.probs) == 100


@pytest.mark.slow
def test_ranked_checkpoint_weights_are_used(tiny, tmp_path):
    s = setup_classes(None, SYNTH_CLASSES, {c: [f"{c} seen up close.", f"a typical {c} pattern."] for c in SYNTH_CLASSES})
    out = train_prompts(tiny, s, synthetic_set(3, 0), TrainConfig(epochs=2, views=1, loss_weights=LossWeights(0.5, 0.1)),
                        teacher_mode="ranked")
    folder = save_trained(tmp_path / "ck", out, s, TrainConfig(epochs=2, views=1))
    ck = read_folder(folder)
    assert ck.teacher_mode == "ranked" and "combine.query" in ck.tensors
    p = Predictor(tiny, s.class_names, s.templates, s.descriptions, checkpoint=ck)
    stored = {(e["class"], e["text"]): e["weight"] for e in ck.config["teacher"]["prompts"]}
    raw = p._teacher_weights()
    for i, pr in enumerate(p.bank.prompts):
        assert raw[i].item() == pytest.approx(stored[(s.class_names[pr.class_index], pr.text)], abs=1e-5)

    # An edited class falls back to the checkpoint's combination network (text-only ranking).
    edited = {**s.descriptions, SYNTH_CLASSES[0]: ["a brand new sentence about red blotches."]}
    p2 = Predictor(tiny, s.class_names, s.templates, edited, checkpoint=ck)
    raw2 = p2._teacher_weights()
    new_idx = p2.bank.indices(0)
    assert raw2[new_idx].sum().item() == pytest.approx(1.0, abs=1e-5)
    for i in p2.bank.indices(1):
        assert raw2[i].item() == pytest.approx(stored[(s.class_names[1], p2.bank.prompts[i].text)], abs=1e-5)


def test_text_cache_is_bounded_and_drops_the_least_recently_used(tiny, monkeypatch):
    import dpt_core.prompt_bank as pb
    from dpt_core.backbone import TextCache

    monkeypatch.setattr(tiny, "text_cache", TextCache(max_items=2))
    first = pb.encode_cached(tiny, ["cache test one.", "cache test two."])
    pb.encode_cached(tiny, ["cache test one."])  # a hit: "one" is now the most recently used
    pb.encode_cached(tiny, ["cache test three."])
    assert len(tiny.text_cache) == 2
    assert "cache test two." not in tiny.text_cache  # the least recently used went
    assert "cache test one." in tiny.text_cache and "cache test three." in tiny.text_cache
    again = pb.encode_cached(tiny, ["cache test one.", "cache test two."])  # "two" re-encoded
    assert torch.allclose(again, first, atol=1e-6)


def test_modality_prompts_are_encoded_once_per_backbone(tiny, monkeypatch):
    import dpt_core.modality as modality
    from dpt_core.text import TextEncoder

    names, feats = modality.modality_features(tiny)
    monkeypatch.setattr(TextEncoder, "encode_texts", lambda *a, **k: pytest.fail("modality prompts re-encoded"))
    names2, feats2 = modality.modality_features(tiny)
    assert names2 == names and torch.equal(feats2, feats)
