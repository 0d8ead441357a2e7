"""Threat: a visitor makes the server send its Hugging Face token somewhere, or read a repo with it.

"Generate descriptions" used to pass the visitor's model field to the inference client
(a URL there became the endpoint) with the server's own HF_TOKEN when the token box was
empty. Now the model must be on the server's allowlist (DPT_GENERATION_MODELS) and only
the visitor's own token is ever sent for a visitor's request.
"""
from __future__ import annotations

import pytest
from huggingface_hub import constants as hf_constants
from loopback_server import recording_server

from app.services import Services
from dpt_core.describe import GenerationError
from dpt_core.genpolicy import GENERATION_MODELS_ENV, check_generation_model
from dpt_core.hub import hub_token_for

SERVER_TOKEN = "hf_ServerOwnersSecret0123456789"
VISITOR_TOKEN = "hf_VisitorsOwnToken9876543210"


@pytest.fixture
def loopback_endpoint():
    """A stand-in endpoint / Hub on 127.0.0.1 that records every request's headers."""
    with recording_server() as recorder:
        yield recorder


@pytest.fixture
def services(tiny, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SERVER_TOKEN)  # the server owner's token, as on a Space
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # let a request out, to loopback
    return Services(tiny)


def generate(services: Services, backend: str, model: str | None, token: str | None):
    setup = services.setup("btmri")
    return services.generate_descriptions(setup, "glioma tumor", backend, 3, token, model)


@pytest.mark.parametrize("visitor_token", [None, "", VISITOR_TOKEN])
def test_a_typed_endpoint_url_is_refused_before_any_request(services, loopback_endpoint, monkeypatch, visitor_token):
    monkeypatch.delenv(GENERATION_MODELS_ENV, raising=False)
    with pytest.raises(GenerationError) as err:
        generate(services, "hf-inference", loopback_endpoint.url + "/v1/chat/completions", visitor_token)
    assert loopback_endpoint.requests == []  # nothing was sent anywhere
    assert "not offered by this server" in str(err.value) or "your own" in str(err.value)
    assert loopback_endpoint.url not in str(err.value) and SERVER_TOKEN not in str(err.value)


def test_server_token_is_not_lent_for_an_allowlisted_model(services, loopback_endpoint, monkeypatch):
    # Even a model the owner listed (here: the loopback endpoint itself) never gets the server's token.
    monkeypatch.setenv(GENERATION_MODELS_ENV, loopback_endpoint.url)
    with pytest.raises(GenerationError, match="your own Hugging Face token"):
        generate(services, "hf-inference", loopback_endpoint.url, None)
    assert loopback_endpoint.requests == []


def test_visitor_token_is_used_for_the_visitors_request_only(services, loopback_endpoint, monkeypatch):
    # Positive control: the fake endpoint does see Authorization headers when a request goes out.
    monkeypatch.setenv(GENERATION_MODELS_ENV, loopback_endpoint.url)
    with pytest.raises(GenerationError):  # it answers 401: the message is ours, not the endpoint's
        generate(services, "hf-inference", loopback_endpoint.url, VISITOR_TOKEN)
    auths = loopback_endpoint.authorizations()
    assert auths and all(a == f"Bearer {VISITOR_TOKEN}" for a in auths)
    assert not any(SERVER_TOKEN in a for a in auths)


def test_local_backend_loads_only_allowlisted_models(services, monkeypatch, tmp_path):
    loaded = []
    import transformers

    monkeypatch.setattr(transformers, "pipeline", lambda *a, **k: loaded.append((a, k)))
    monkeypatch.delenv(GENERATION_MODELS_ENV, raising=False)  # unset: no local model at all
    for typed in ("/etc", str(tmp_path), "gpt2", "../../models/x"):
        with pytest.raises(GenerationError):
            generate(services, "local", typed, None)
    monkeypatch.setenv(GENERATION_MODELS_ENV, "org/allowed-llm")
    with pytest.raises(GenerationError, match="not offered"):
        generate(services, "local", "/etc", None)
    assert loaded == []  # transformers was never asked to load anything


def test_allowlist_comes_from_the_server_configuration(monkeypatch):
    monkeypatch.setenv(GENERATION_MODELS_ENV, " org/a , org/b ,")
    assert check_generation_model("hf-inference", "") == "org/a"
    assert check_generation_model("local", "org/b") == "org/b"
    with pytest.raises(GenerationError):
        check_generation_model("hf-inference", "org/c")
    monkeypatch.setenv(GENERATION_MODELS_ENV, "")  # empty: language models off
    with pytest.raises(GenerationError, match="no language model"):
        check_generation_model("hf-inference", "org/a")


def test_hub_downloads_for_visitors_use_no_server_token():
    assert hub_token_for(listed_by_server=False) is False  # False: huggingface_hub sends no token
    assert hub_token_for(listed_by_server=True) is None  # the server's own registry checkpoint
    assert hub_token_for(listed_by_server=False, visitor_token=f" {VISITOR_TOKEN} ") == VISITOR_TOKEN



# The Hub's address is read when huggingface_hub is imported: the download runs in a child
# process whose environment points it at the loopback stand-in (never at the real Hub).
_DOWNLOAD_SCRIPT = """
import sys
import app.services as app_services
from dpt_core.hub import HubError
from dpt_core.registry import RegistryEntry

ckpt_id, listed = sys.argv[1], sys.argv[2] == "listed"
if listed:
    entry = RegistryEntry(ckpt_id, "listed", "btmri", "biomed-dpt", "few_shot", 16)
    app_services.registry_entry = lambda cid: entry if cid == ckpt_id else None
try:
    app_services.Services("tiny").load_checkpoint(ckpt_id)
except HubError as exc:
    print("refused:", exc)
"""


def download_through_the_app(endpoint, tmp_path, ckpt_id: str, listed: bool) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint.url, "HF_TOKEN": SERVER_TOKEN,
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _DOWNLOAD_SCRIPT, ckpt_id, "listed" if listed else "typed"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_a_typed_hub_checkpoint_is_fetched_without_the_server_token(loopback_endpoint, tmp_path):
    out = download_through_the_app(loopback_endpoint, tmp_path, "hf-hub:owner/private-ckpt", listed=False)
    assert "refused:" in out
    assert loopback_endpoint.requests, "the download should have reached the stand-in Hub"
    assert not any(SERVER_TOKEN in a for a in loopback_endpoint.authorizations())


@pytest.mark.slow
def test_registry_checkpoints_may_use_the_server_token(loopback_endpoint, tmp_path):
    # Positive control for the test above: the same download, listed in the server's registry.
    download_through_the_app(loopback_endpoint, tmp_path, "hf-hub:owner/listed-ckpt", listed=True)
    assert any(a == f"Bearer {SERVER_TOKEN}" for a in loopback_endpoint.authorizations())
