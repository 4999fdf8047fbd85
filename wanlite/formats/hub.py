"""Hugging Face Hub ids (`org/name`) as local Wan paths, fetched through `huggingface_hub` like every diffusers model.

Only the transformer's files are downloaded (a Wan 14B repository also holds a 11 GB text encoder and the VAE):
first the few small config files that say where the transformer lives (a pipeline's `transformer/`, a Wan2.2
A14B expert, or the repository root), then that folder's config, weights (of the chosen variant) and records.
Offline (`HF_HUB_OFFLINE=1` or `local_files_only=True`) everything resolves from the local cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..errors import FormatError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(path) -> bool:
    """`org/name` that is not a local path: what diffusers would look up on the Hub."""
    text = str(path)
    return not Path(text).exists() and bool(REPO_ID.match(text)) and not text.endswith(".safetensors")


def resolve(
    path,
    locators: list[str],
    locate: Callable[[Path], Path],
    files: Callable[[str], list[str]],
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir=None,
    token=None,
    local_files_only: bool | None = None,
    force_download: bool = False,
) -> Path:
    """A local path for `path` (+ `subfolder`): itself when it exists, else the Hub repository `path` downloaded
    (only the transformer's files) or found in the cache. The caller knows Wan's layouts: `locators` are the small
    files that say where a transformer lives, `locate(root)` picks its folder from them, `files(folder)` are the
    allow_patterns of that folder. `subfolder` may also name one .safetensors file (a ComfyUI repackaged release)."""
    if not is_repo_id(path):
        return Path(path) / subfolder if subfolder else Path(path)
    fetch = dict(
        repo_id=str(path),
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=bool(local_files_only),
        force_download=force_download,
    )
    sub = (subfolder or "").strip("/")
    at = f"{sub}/" if sub else ""
    if sub.endswith(".safetensors"):
        return Path(_download(path, fetch, [sub])) / sub
    root = Path(_download(path, fetch, [at + name for name in locators]))
    if not (root / sub).is_dir() or not any((root / sub).iterdir()):
        raise FormatError(
            f"{path}{'/' + sub if sub else ''} (Hub): holds no Wan transformer config (looked for "
            f"{', '.join(at + n for n in locators)}). Fix: pass subfolder= the folder holding the transformer's "
            "config.json, or subfolder='path/to/file.safetensors' for one file."
        )
    folder = locate(root / sub).relative_to(root).as_posix()
    folder = "" if folder == "." else folder
    return Path(_download(path, fetch, files(folder))) / folder


def _download(repo, fetch: dict, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return snapshot_download(allow_patterns=patterns, **fetch)
    except LocalEntryNotFoundError as err:
        raise FormatError(
            f"{repo}: no such local path, and the Hub repository is not (completely) in the local cache "
            f"({fetch['cache_dir'] or 'HF_HUB_CACHE'}) while downloads are off (HF_HUB_OFFLINE=1 or "
            "local_files_only=True) or the Hub cannot be reached. Fix: check the path, or download it once online "
            f"(unset HF_HUB_OFFLINE), or point cache_dir / HF_HOME at the cache that holds it. ({err})"
        ) from None
    except RevisionNotFoundError:
        raise FormatError(
            f"{repo}: revision {fetch['revision']!r} does not exist. Fix: use a branch, tag or commit of it."
        ) from None
    except GatedRepoError:
        raise FormatError(
            f"{repo}: a gated repository. Fix: accept its terms on the Hub and pass token= (or `hf auth login`)."
        ) from None
    except RepositoryNotFoundError:
        raise FormatError(
            f"{repo}: no such local path, and no such Hub repository (or it is private). Fix: check the path or "
            "the repository id; for a private one pass token= (or `hf auth login`)."
        ) from None
