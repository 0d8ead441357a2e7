"""Model invariants: prompt assembly, parity with the backbone, visual prompt layouts."""
import pytest
import torch
import torch.nn.functional as F

from dpt_core.model import BiomedDPT
from dpt_core.presets import list_presets, load_preset
from dpt_core.text import TextEncoder
from dpt_core.visual import VisualPromptConfig


def test_text_prompt_at_init_equals_the_template(tiny):
    p = load_preset("btmri")
    m = BiomedDPT(tiny, p.classes, p.template, p.n_ctx)
    ids = tiny.tokenizer([p.template.format(c) for c in p.classes])
    plain = F.normalize(tiny.clip.text(ids.ids), dim=-1)  # open_clip's own text forward on token ids
    assert torch.allclose(m.encode_prompts(), plain, atol=1e-5)


def test_trimmed_and_padded_text_features_match(tiny):
    texts = ["a CT photo of a kidney stone in the kidney.", "a short one.",
             "a dermatoscopy photo of a basal cell carcinoma in the skin with many more words here."]
    enc = TextEncoder(tiny)
    trimmed, padded = tiny.tokenizer(texts, trim=True), tiny.tokenizer(texts, trim=False)
    assert padded.ids.shape[1] == 256 and trimmed.ids.shape[1] < 30
    with torch.no_grad():
        a, b = enc.forward_ids(trimmed), enc.forward_ids(padded)
    assert (a - b).abs().max().item() <= 1e-5


def test_xray_context_covers_word_pieces_not_words(tiny):
    p = load_preset("kneexray")  # "a frontal X-ray photo of a {} ...", n_ctx 6
    m = BiomedDPT(tiny, p.classes, p.template, p.n_ctx)
    pl = m.prompt_learner
    assert pl.ctx_init == "a frontal x - ray photo"
    # the fixed suffix starts at "of a <class>": compare with the tokenised template
    ids = tiny.tokenizer([p.template.format(p.classes[0])]).ids[0]
    emb = tiny.word_embeddings(ids)
    assert torch.equal(pl.token_suffix[0, : len(ids) - 1 - p.n_ctx], emb[1 + p.n_ctx:])
    assert tiny.tokenizer.hf.convert_ids_to_tokens(ids[1 + p.n_ctx: 1 + p.n_ctx + 2].tolist()) == ["of", "a"]
    assert torch.equal(pl.ctx.detach(), emb[1: 1 + p.n_ctx])


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds(tiny, name):
    p = load_preset(name)
    m = BiomedDPT(tiny, p.classes, p.template, p.n_ctx)
    assert m.prompt_learner.ctx.shape == (p.n_ctx, tiny.text_width)
    assert m.encode_prompts().shape == (len(p.classes), tiny.embed_dim)


def test_n_ctx_longer_than_opening_is_refused(tiny):
    with pytest.raises(ValueError, match="word-pieces"):
        BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 5)


def test_visual_prompts_off_is_the_plain_backbone(tiny):
    m = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4, VisualPromptConfig(n_prompts=0))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(m.image_encoder(x), tiny.clip.visual(x), atol=1e-6)


def _block_inputs(tiny, model, x):
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
             for blk in tiny.trunk.blocks]
    try:
        with torch.no_grad():
            model.image_encoder(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_reference_layout_keeps_197_tokens_and_zeroes_1_to_4_before_every_block(tiny):
    m = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4)
    seen = _block_inputs(tiny, m, torch.randn(2, 3, 224, 224))
    assert len(seen) == len(tiny.trunk.blocks)
    for x in seen:
        assert x.shape[1] == 197
        assert torch.count_nonzero(x[:, 1:5]) == 0
        assert torch.count_nonzero(x[:, 5:]) > 0


def test_insert_layout_adds_tokens(tiny):
    m = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4, VisualPromptConfig(layout="insert"))
    seen = _block_inputs(tiny, m, torch.randn(1, 3, 224, 224))
    assert all(x.shape[1] == 201 and torch.count_nonzero(x[:, 1:5]) == 0 for x in seen)


def test_zero_prompts_change_the_features(tiny):
    x = torch.randn(2, 3, 224, 224)
    on = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4)
    off = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4, VisualPromptConfig(n_prompts=0))
    with torch.no_grad():
        assert not torch.allclose(on.image_encoder(x), off.image_encoder(x), atol=1e-3)


def test_logits_use_the_backbone_logit_scale(tiny):
    m = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 224, 224))
    cos = out.image_features @ out.text_features.t()
    assert torch.allclose(out.logits, tiny.logit_scale() * cos)


def test_set_classes_keeps_the_context(tiny):
    m = BiomedDPT(tiny, ["glioma tumor", "normal brain"], "a MR photo of a {} in the brain.", 5)
    with torch.no_grad():
        m.prompt_learner.ctx.add_(0.1)
    ctx = m.prompt_learner.ctx.detach().clone()
    m.prompt_learner.set_classes(["pituitary tumor", "meningioma tumor", "normal brain"])
    assert torch.equal(m.prompt_learner.ctx.detach(), ctx)
    assert m.encode_prompts().shape[0] == 3
