"""Backbone specs: tiny structure, local-dir loading from any working directory, spec errors."""
import os

import pytest
import torch

from dpt_core.backbone import BackboneError, load_backbone, parse_spec


def test_tiny_has_biomedclip_structure(tiny):
    assert tiny.grid_size == (14, 14)
    assert tiny.trunk.patch_embed.patch_size == (16, 16)
    x = torch.zeros(1, 3, 224, 224)
    tokens = tiny.trunk.forward_features(x)
    assert tokens.shape[1] == 197  # 14x14 patches + CLS
    assert tiny.logit_scale().item() == pytest.approx(100.0, rel=1e-5)
    assert tiny.random_weights
    assert type(tiny.text_pooler).__name__ == "ClsLastHiddenStatePooler"
    assert len(tiny.text_proj) == 3  # Linear -> GELU -> Linear, as BiomedCLIP's MLP projection
    assert tiny.tokenizer.pad_id == 0


def test_tiny_is_deterministic_and_frozen(tiny):
    from dpt_core.tiny import build_tiny_clip

    torch.manual_seed(123)
    again = build_tiny_clip()
    for (k, a), (_, b) in zip(tiny.clip.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in tiny.clip.parameters())
    assert not tiny.clip.training


def test_tiny_tokenizer_is_wordpiece(tiny):
    assert tiny.tokenizer.pieces("a frontal X-ray photo") == ["a", "frontal", "x", "-", "ray", "photo"]
    # unknown words fall back to characters, never to [UNK]
    assert "[UNK]" not in tiny.tokenizer.pieces("qzxv")


def test_local_dir_resolves_text_tower_relative_to_the_folder(tiny, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the backbone folder
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    bb = load_backbone(tiny_dir, "cpu")
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(bb.clip.visual(x), tiny.clip.visual(x), atol=1e-6)
    texts = ["a MR photo of a glioma tumor in the brain.", "a photo of a cat."]
    a, b = tiny.tokenizer(texts), bb.tokenizer(texts)
    assert torch.equal(a.ids, b.ids)
    assert torch.allclose(bb.clip.text(b.ids), tiny.clip.text(a.ids), atol=1e-6)
    assert bb.random_weights  # recorded in the folder's config


def test_local_dir_errors_are_clear(tmp_path):
    with pytest.raises(BackboneError, match="open_clip_config.json"):
        load_backbone(f"local-dir:{tmp_path}", "cpu")


@pytest.mark.parametrize("spec", ["", "hf-hub:", "hf-hub:noslash", "local-dir:", "ViT-B-16", "tinyy"])
def test_bad_specs(spec):
    with pytest.raises(BackboneError):
        parse_spec(spec)


def test_hub_backbone_offline_is_a_clear_error():
    with pytest.raises(BackboneError, match="Hugging Face Hub"):
        load_backbone("hf-hub:nobody/not-a-real-model-xyz", "cpu")


@pytest.mark.network
def test_real_biomedclip_loads():
    bb = load_backbone("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "cpu")
    assert bb.text_width == 768 and bb.vision_width == 768 and bb.embed_dim == 512
    assert bb.tokenizer.context_length == 256
    assert len(bb.trunk.blocks) == 12
