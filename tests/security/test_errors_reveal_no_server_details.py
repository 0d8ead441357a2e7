"""Threat: error messages that hand a visitor server paths, file contents, or a stack trace.

Checkpoint and Hub errors quoted cache paths; a forged gallery index (any client can
call any event with any values) raised an unhandled error. Messages now keep only the
last part of a path, and forged event values are clear errors.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest

from app import formatting as fmt
from app.choices import ALLOW_LOCAL_ENV
from app.predict.handlers import PredictController
from app.redact import hide_paths
from app.services import Services
from dpt_core.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def ctl(tiny):
    return PredictController(Services(tiny))


def message_of(fn, *args) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    assert "Traceback" not in info.value.message
    return info.value.message


@pytest.mark.parametrize("text, shown", [
    ("/home/someone/.cache/huggingface/hub/models--o--r/snapshots/x/config.json: unreadable", "config.json: unreadable"),
    ("no checkpoint at '/srv/app/private/ck': expected a folder", "no checkpoint at 'ck': expected a folder"),
    (r"cannot open C:\Users\alice\scan.dcm now", "cannot open scan.dcm now"),
    ("hf-hub:ORG/REPO[/SUBFOLDER][@REVISION] and 3/4 and ORG/REPO", "hf-hub:ORG/REPO[/SUBFOLDER][@REVISION] and 3/4 and ORG/REPO"),
])
def test_paths_are_cut_to_their_last_part(text, shown):
    assert hide_paths(text) == shown


def test_visitor_messages_carry_no_server_path(tmp_path):
    exc = CheckpointError(f"{tmp_path}/secret-folder/ck: unreadable config.json")
    message = fmt.friendly_error(exc)
    assert str(tmp_path) not in message and "secret-folder" not in message and "ck" in message


def test_a_broken_local_checkpoint_names_no_folder(ctl, tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")  # a private deployment that allows typed folders
    folder = tmp_path / "hidden-server-dir" / "ck"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format_version": 1}))
    (folder / "prompts.safetensors").write_bytes(b"not safetensors")
    table = ctl.preset_table("btmri")
    with pytest.warns(UserWarning) as shown:  # gr.Warning: a toast for the visitor
        ctl.on_checkpoint(str(folder), "btmri", table, {"dir": "", "trained": {}})
    text = " ".join(str(w.message) for w in shown)
    assert "unreadable" in text and "hidden-server-dir" not in text and str(tmp_path) not in text


@pytest.mark.parametrize("index", [999, -1, "0", None, [0, 1], True, 2.5])
def test_forged_gallery_index_is_a_clear_error(ctl, index):
    examples = [{"file": "a.png", "title": "a"}, {"file": "b.png", "title": "b"}]
    assert message_of(ctl.on_example, examples, "btmri", SimpleNamespace(index=index)) == "No such example."


def test_a_real_gallery_index_still_works(ctl):
    examples = [{"file": "a.png", "title": "a", "suggested_preset": "busi"}]
    path, preset = ctl.on_example(examples, "btmri", SimpleNamespace(index=0))
    assert path.endswith("a.png") and preset == "busi"
