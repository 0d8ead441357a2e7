"""The one place that talks to the Hugging Face Hub for checkpoints (download and push).

Checkpoint ids on the Hub: ``hf-hub:ORG/REPO[/SUBFOLDER...][@REVISION]``. A
path ending in a file (e.g. ``.../model.pth.tar-100``) names that file.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ResourceError

HF_PREFIX = "hf-hub:"
log = logging.getLogger(__name__)


class HubError(ResourceError):
    """A Hub operation failed; the message says why in plain words."""


# A revision is a branch or tag name, or a commit. Names may hold "/" ("refs/pr/1", "release/v2")
# but every part starts with a letter, digit or "_": no "." or ".." part, no leading "/", no backslash.
# Offline, huggingface_hub opens <cache>/refs/<revision> as a file, so anything looser reads
# files outside the cache.
_REVISION_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_REVISION = re.compile(rf"{_REVISION_PART}(?:/{_REVISION_PART})*")
MAX_REVISION_CHARS = 128


def valid_revision(revision: str) -> bool:
    """Whether ``revision`` is a safe branch/tag name or commit hash (see ``_REVISION``)."""
    return (len(revision) <= MAX_REVISION_CHARS and bool(_REVISION.fullmatch(revision))
            and ".." not in revision and not revision.endswith((".", ".lock")))


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # ORG/REPO
    path: str  # subfolder or file inside the repo ("" for the root)
    revision: str | None

    def __str__(self) -> str:
        tail = f"/{self.path}" if self.path else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}{tail}{rev}"


def parse_hub_id(ckpt_id: str) -> HubRef:
    """The one parser of ``hf-hub:`` ids: repo, path and revision are all checked here.

    Error messages never repeat the id: it is the visitor's input, and a rejected one
    may be crafted to look like a server path.
    """
    body = ckpt_id[len(HF_PREFIX):] if ckpt_id.startswith(HF_PREFIX) else ckpt_id
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision:
            raise HubError("empty revision after '@' in the Hub checkpoint id")
        if not valid_revision(revision):
            raise HubError("invalid revision in the Hub checkpoint id: use a branch or tag name "
                           "(letters, digits, underscores, hyphens, dots; slashes only between parts) or a 40-character commit hash")
    if "\\" in body or body.startswith("/"):
        raise HubError("invalid Hub checkpoint id: expected hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise HubError("not a Hub checkpoint id: expected hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]")
    for p in parts:
        if p in (".", "..") or not re.fullmatch(r"[\w.\-+]+", p) or len(p) > 96:
            raise HubError("invalid path component in the Hub checkpoint id: only letters, digits, "
                           "'_', '-', '.', '+' (no '.' or '..' parts)")
    if not valid_repo_id("/".join(parts[:2])):
        raise HubError("invalid repository name in the Hub checkpoint id: expected ORG/REPO")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), revision)


def _explain(exc: Exception, what: str) -> HubError:
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "Offline" in name or "offline" in text.lower():
        return HubError(f"{what}: the Hub is not reachable in offline mode (HF_HUB_OFFLINE is set)")
    if "LocalEntryNotFound" in name:  # no connection and nothing in the local cache
        return HubError(f"{what}: could not reach the Hugging Face Hub and it is not in the local cache")
    if "EntryNotFound" in name or "404" in text:
        return HubError(f"{what}: not found on the Hub")
    if "RepositoryNotFound" in name or "401" in text or "403" in text:
        return HubError(f"{what}: repository not found or access denied (private repos need a token)")
    if "Connect" in name or "Timeout" in name:
        return HubError(f"{what}: could not reach the Hugging Face Hub")
    # Anything else: the exception text may quote a local file or a cache path, so it is not
    # repeated to the caller (the type name goes to the server log, the text does not).
    log.warning("Hub download failed: %s", name)
    return HubError(f"{what}: the download from the Hugging Face Hub failed ({name})")


# Offline, every lookup would wait for its own timeouts and retries (about 24 s each). After one
# failed connection the Hub counts as unreachable for a while: lookups then read the local cache
# only, which answers at once (a cached file, or one short message).
UNREACHABLE_MEMO_S = 120.0
ETAG_TIMEOUT_S = 5.0  # the first lookup's wait for the Hub (huggingface_hub's default is 10 s)
_unreachable_until = 0.0


def hub_recently_unreachable() -> bool:
    return time.monotonic() < _unreachable_until


def _connection_problem(exc: Exception) -> bool:
    name = type(exc).__name__
    return any(k in name for k in ("Connect", "Timeout", "LocalEntryNotFound"))  # offline mode is instant already


def download_file(ref: HubRef, filename: str | None = None, token: str | bool | None = None,
                  max_bytes: int | None = None) -> Path:
    """One file of a Hub repo (``filename`` inside ``ref.path``, or ``ref.path`` itself) in the local cache.

    ``token``: a token string; None for the token stored on this machine (``HF_TOKEN`` or a
    login); False to send no token at all (a request made for someone else, see ``hub_token_for``).
    ``max_bytes``: refuse, before downloading, a file the Hub says is larger (a typed id must not
    make the server fetch and keep gigabytes).
    """
    from huggingface_hub import hf_hub_download

    global _unreachable_until
    full = "/".join(p for p in (ref.path, filename or "") if p)
    sub, _, name = full.rpartition("/")
    local_only = hub_recently_unreachable()
    if max_bytes is not None and not local_only:
        size = _remote_size(ref, sub, name, token)
        if size is not None and size > max_bytes:
            raise HubError(f"{ref.repo_id}/{full} is {size / 2**20:.0f} MB; a checkpoint file here may be "
                           f"at most {max_bytes / 2**20:.0f} MB")
    try:
        return Path(hf_hub_download(ref.repo_id, name, subfolder=sub or None, revision=ref.revision, token=token,
                                    etag_timeout=ETAG_TIMEOUT_S, local_files_only=local_only))
    except Exception as exc:  # every failure becomes one readable message
        if not local_only and _connection_problem(exc):
            _unreachable_until = time.monotonic() + UNREACHABLE_MEMO_S
        raise _explain(exc, f"{ref.repo_id}/{full}") from exc


def _remote_size(ref: HubRef, sub: str, name: str, token: str | bool | None) -> int | None:
    """The file's size as the Hub states it, or None when it cannot say (offline, unreachable: the
    download that follows then fails or reads the cache, and its own message applies)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        url = hf_hub_url(ref.repo_id, name, subfolder=sub or None, revision=ref.revision)
        return get_hf_file_metadata(url, token=token, timeout=ETAG_TIMEOUT_S).size
    except Exception:  # noqa: BLE001 - any failure here is reported by the download itself
        return None


def valid_repo_id(repo_id: str | None) -> bool:
    """Whether ``repo_id`` has the ORG/NAME form of a Hub repository."""
    return bool(re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id or ""))


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True,
                path_in_repo: str | None = None, message: str = "Add Biomed-DPT prompt checkpoint") -> str:
    """Create the model repo if needed (private by default) and upload ``folder``; returns the repo URL."""
    from huggingface_hub import HfApi

    if not valid_repo_id(repo_id):
        raise HubError(f"repository name must look like ORG/NAME, not {repo_id!r}")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, path_in_repo=path_in_repo,
                          commit_message=message, repo_type="model")
    except Exception as exc:
        raise _explain(exc, f"push to {repo_id}") from exc
    return str(url)


def push_runs(folder: str | Path, repo_id: str, files: list[str], token: str | None = None, private: bool = True,
              message: str = "Publish Biomed-DPT runs") -> str:
    """Upload ``files`` (paths relative to ``folder``, kept as subfolders) to one model repo in one commit."""
    from huggingface_hub import HfApi

    if not valid_repo_id(repo_id):
        raise HubError(f"repository name must look like ORG/NAME, not {repo_id!r}")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=list(files),
                          commit_message=message, repo_type="model")
    except Exception as exc:
        raise _explain(exc, f"push to {repo_id}") from exc
    return str(url)


def hub_token_for(listed_by_server: bool, visitor_token: str | None = None) -> str | bool | None:
    """The token a server may use to download a checkpoint on a visitor's behalf.

    The visitor's own token when given (used for that request only); else the server's
    stored token (None) only for an id the server itself lists (its registry), and no
    token at all (False) for an id a visitor typed: a private repo of the server's owner
    must never be readable through the server.
    """
    if visitor_token and visitor_token.strip():
        return visitor_token.strip()
    return None if listed_by_server else False
