"""Threat: a crafted ``hf-hub:ORG/REPO@REVISION`` reads a server file.

Offline (or with the Hub unreachable) huggingface_hub opens ``<cache>/models--ORG--REPO/refs/<revision>``;
``@../../../file`` pointed that outside the cache, and its error quoted the file's first line
and the cache path back to the caller. ``dpt_core.hub.parse_hub_id`` now validates the whole id.
"""
from __future__ import annotations

import pytest
from huggingface_hub import constants as hf_constants

from dpt_core.checkpoint import load_checkpoint
from dpt_core.hub import HubError, parse_hub_id, valid_revision

SECRET = "/home/alice: TOP-SECRET-LINE"
CRAFTED = "hf-hub:org/repo@../../../secret.txt"


@pytest.fixture
def crafted_cache(tmp_path, monkeypatch):
    """A Hub cache with the repo's refs folder, and a server file three levels above it."""
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "cache" / "models--org--repo" / "refs").mkdir(parents=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_the_crafted_refs_path_does_reach_the_file_without_our_check(crafted_cache):
    # Why the check exists: the library itself follows the crafted revision and quotes the file.
    from huggingface_hub import hf_hub_download

    with pytest.raises(Exception) as err:
        hf_hub_download("org/repo", "config.json", revision="../../../secret.txt")
    assert "TOP-SECRET-LINE" in str(err.value)


def test_crafted_revision_is_refused_before_any_file_is_opened(crafted_cache):
    with pytest.raises(HubError) as err:
        load_checkpoint(CRAFTED)
    message = str(err.value)
    assert "invalid revision" in message
    assert "TOP-SECRET" not in message and str(crafted_cache) not in message and ".." not in message
    from app.redact import hide_paths

    assert hide_paths(message) == message  # nothing in it looks like a path: the visitor reads it whole


def test_the_app_refuses_it_with_no_path_or_content(crafted_cache, tiny):
    from app.services import Services

    with pytest.raises(HubError) as err:
        Services(tiny).load_checkpoint(CRAFTED)
    assert "TOP-SECRET" not in str(err.value) and str(crafted_cache) not in str(err.value)


@pytest.mark.parametrize("revision", [
    "../../../secret.txt", "..", "a/../b", "/etc/passwd", "main/", "a//b", "..\\\\x", "a\\\\b", ".git",
    "main.lock", "x" * 200, "main\n", "ma in", "%2e%2e", "~/x",
])
def test_traversal_revisions_are_invalid(revision):
    assert not valid_revision(revision)
    with pytest.raises(HubError):
        parse_hub_id(f"hf-hub:org/repo@{revision}")


@pytest.mark.parametrize("revision", ["main", "v1.2", "refs/pr/1", "release/2024-06", "0123456789abcdef" * 2 + "01234567"])
def test_branch_tag_and_commit_revisions_are_valid(revision):
    assert valid_revision(revision)
    assert parse_hub_id(f"hf-hub:org/repo/sub@{revision}").revision == revision


@pytest.mark.parametrize("ckpt_id", ["hf-hub:org", "hf-hub:/etc/passwd", "hf-hub:org/../x", "hf-hub:org\\\\x/y",
                                     "hf-hub:org/repo/../../x", "hf-hub:o@/x"])
def test_malformed_ids_are_refused_without_repeating_them(ckpt_id):
    with pytest.raises(HubError) as err:
        parse_hub_id(ckpt_id)
    assert ckpt_id not in str(err.value)
