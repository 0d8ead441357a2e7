"""Offline, a Hub lookup fails once at the network's pace, then at once from the local cache only."""
import time

import pytest

from dpt_core import hub


class ConnectError(Exception):
    """Stands for the HTTP client's connection error (only its name matters to the wrapper)."""


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(hub, "_unreachable_until", 0.0)


def test_second_lookup_after_a_connection_failure_is_cache_only(monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append(kw)
        if kw["local_files_only"]:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
        time.sleep(0.3)  # the network's timeouts
        raise ConnectError("name resolution failed")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ref = hub.parse_hub_id("hf-hub:org/repo/sub")
    t = time.perf_counter()
    with pytest.raises(hub.HubError, match="could not reach the Hugging Face Hub"):
        hub.download_file(ref, "config.json")
    first = time.perf_counter() - t
    t = time.perf_counter()
    with pytest.raises(hub.HubError, match="could not reach the Hugging Face Hub"):
        hub.download_file(ref, "prompts.safetensors")
    second = time.perf_counter() - t
    assert [c["local_files_only"] for c in calls] == [False, True]
    assert first >= 0.3 and second < 0.1
    assert calls[0]["etag_timeout"] == hub.ETAG_TIMEOUT_S


def test_other_errors_do_not_mark_the_hub_unreachable(monkeypatch):
    import huggingface_hub

    def not_found(repo_id, filename, **kw):
        raise huggingface_hub.errors.EntryNotFoundError("404 missing")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
    with pytest.raises(hub.HubError, match="not found"):
        hub.download_file(hub.parse_hub_id("hf-hub:org/repo"), "config.json")
    assert not hub.hub_recently_unreachable()


def test_startup_switches_to_offline_mode_when_the_hub_host_is_unreachable(monkeypatch):
    import socket

    from huggingface_hub import constants

    from dpt_core import reachability

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    probes = []

    def refuse(address, timeout):
        probes.append((address, timeout))
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    assert reachability.work_offline_if_unreachable() is True
    assert probes == [(("hub.example.org", 443), reachability.PROBE_TIMEOUT_S)]
    assert reachability.offline_mode() and constants.HF_HUB_OFFLINE is True
    assert reachability.work_offline_if_unreachable() is False and len(probes) == 1  # already offline: no probe
