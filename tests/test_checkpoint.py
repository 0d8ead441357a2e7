"""Checkpoint format: exact round trip, strict loading, Hub ids, Dassl import."""
import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from dpt_core.checkpoint import (
    CheckpointError,
    import_dassl,
    load_checkpoint,
    make_config,
    read_folder,
    save_checkpoint,
)
from dpt_core.hub import HubError, parse_hub_id
from dpt_core.model import BiomedDPT
from dpt_core.presets import load_preset
from dpt_core.visual import VisualPromptConfig


@pytest.fixture()
def trained(tiny):
    p = load_preset("btmri")
    m = BiomedDPT(tiny, p.classes, p.template, p.n_ctx)
    with torch.no_grad():
        m.prompt_learner.ctx.add_(torch.randn_like(m.prompt_learner.ctx))
    return m, p


def test_round_trip_is_exact(tiny, trained, tmp_path):
    m, p = trained
    out = save_checkpoint(tmp_path / "ck", m, make_config(m, preset=p, metrics={"accuracy": 0.5}))
    assert sorted(x.name for x in out.iterdir()) == ["README.md", "config.json", "prompts.safetensors"]
    ck = read_folder(out)
    assert torch.equal(ck.tensors["text_ctx"], m.prompt_learner.ctx.detach())
    again = ck.build_model(tiny)
    assert again.class_names == list(p.classes)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(again(x).logits, m(x).logits)
    card = (out / "README.md").read_text()
    assert "not for diagnosis" in card.lower() or "must not be used for diagnosis" in card
    assert "random weights" in card.lower()
    assert json.loads((out / "config.json").read_text())["ctx_init"] == "a mr photo of a"


def test_learnable_visual_prompts_round_trip(tiny, tmp_path):
    m = BiomedDPT(tiny, ["a", "b"], "a photo of a {}.", 4, VisualPromptConfig(learnable=True, layout="insert"))
    with torch.no_grad():
        m.image_encoder.prompts.normal_()
    out = save_checkpoint(tmp_path / "v", m, make_config(m))
    again = read_folder(out).build_model(tiny)
    assert again.image_encoder.config.layout == "insert"
    assert torch.equal(again.image_encoder.prompts, m.image_encoder.prompts)


def _tamper(folder, config=None, tensors=None):
    if config is not None:
        cfg = json.loads((folder / "config.json").read_text())
        config(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        t = load_file(str(folder / "prompts.safetensors"))
        tensors(t)
        save_file(t, str(folder / "prompts.safetensors"))


@pytest.mark.parametrize("config,tensors,match", [
    (lambda c: c.update(format_version=99), None, "format_version"),
    (lambda c: c.pop("class_names"), None, "class_names"),
    (lambda c: c.update(method="coop"), None, "method"),
    (None, lambda t: t.update(extra=torch.zeros(2)), "unknown tensors"),
    (None, lambda t: t.pop("text_ctx"), "lacks text_ctx"),
    (None, lambda t: t.update(text_ctx=torch.zeros(3, 64)), "n_ctx"),
    (lambda c: c["visual_prompts"].update(learnable=True), None, "learnable"),
])
def test_strict_loading_names_the_problem(trained, tmp_path, config, tensors, match):
    m, p = trained
    out = save_checkpoint(tmp_path / "ck", m, make_config(m, preset=p))
    _tamper(out, config, tensors)
    with pytest.raises(CheckpointError, match=match):
        read_folder(out)


def test_backbone_width_mismatch_is_an_error(tiny, trained, tmp_path):
    m, p = trained
    out = save_checkpoint(tmp_path / "ck", m, make_config(m, preset=p))
    _tamper(out, tensors=lambda t: t.update(text_ctx=torch.zeros(p.n_ctx, 768)))
    with pytest.raises(CheckpointError, match="width 768"):
        read_folder(out).build_model(tiny)


def test_missing_files_and_unknown_ids(tmp_path):
    with pytest.raises(CheckpointError, match="needs config.json"):
        read_folder(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nope"))


@pytest.mark.parametrize("ckpt_id,repo,path,rev", [
    ("hf-hub:org/repo", "org/repo", "", None),
    ("hf-hub:org/repo/sub/dir@v1.0", "org/repo", "sub/dir", "v1.0"),
    ("hf-hub:TahaKoleilat/BiomedCoOp/few_shot/btmri/model.pth.tar-100", "TahaKoleilat/BiomedCoOp",
     "few_shot/btmri/model.pth.tar-100", None),
])
def test_hub_ids(ckpt_id, repo, path, rev):
    ref = parse_hub_id(ckpt_id)
    assert (ref.repo_id, ref.path, ref.revision) == (repo, path, rev)
    assert str(ref) == ckpt_id


@pytest.mark.parametrize("bad", ["hf-hub:onlyorg", "hf-hub:org/repo/../x", "hf-hub:org/repo@"])
def test_bad_hub_ids(bad):
    with pytest.raises(HubError):
        parse_hub_id(bad)


def test_hub_checkpoint_offline_is_a_clear_error():
    with pytest.raises(HubError, match="offline|reach"):
        load_checkpoint("hf-hub:someone/some-prompts")


def _dassl_file(path, ctx):
    sd = OrderedDict([("prompt_learner.ctx", ctx), ("prompt_learner.token_prefix", torch.zeros(4, 1, 64))])
    torch.save({"state_dict": sd, "epoch": 100, "optimizer": {"state": {}}, "scheduler": None}, path)
    return path


def test_biomedcoop_import_uses_its_template(tiny, tmp_path):
    ctx = torch.randn(4, tiny.text_width)
    ck = import_dassl(_dassl_file(tmp_path / "model.pth.tar-100", ctx), "busi", "biomedcoop", "tiny")
    assert ck.template == "a photo of a {}." and ck.n_ctx == 4 and ck.teacher_mode == "mean"
    assert ck.visual.n_prompts == 0  # BiomedCoOp has no visual prompts
    assert torch.equal(ck.tensors["text_ctx"], ctx)
    model = ck.build_model(tiny)
    assert model.class_names == list(load_preset("busi").classes)


def test_reference_import_needs_the_preset_context_length(tiny, tmp_path):
    f = _dassl_file(tmp_path / "m.pth.tar", torch.randn(4, tiny.text_width))
    with pytest.raises(CheckpointError, match="uses 5"):
        import_dassl(f, "btmri", "biomeddpt")
    f5 = _dassl_file(tmp_path / "m5.pth.tar", torch.randn(5, tiny.text_width))
    ck = load_checkpoint(str(f5), preset="btmri")
    assert ck.config["method"] == "biomed-dpt" and ck.visual.n_prompts == 4
    with pytest.raises(CheckpointError, match="preset"):
        load_checkpoint(str(f5))
