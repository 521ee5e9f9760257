"""Fetching official weight files: a local folder first, then the Hugging Face hub (cached), or for
releases hosted elsewhere (MAR's Dropbox links) a direct URL into argen's cache."""
from __future__ import annotations

import os
from pathlib import Path

from argen.errors import DownloadError

ENV_DIR = "ARGEN_CHECKPOINT_DIR"


def resolve_file(
    repo_id: str,
    filename: str,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    url: str | None = None,
) -> Path:
    """Path of ``filename``: from ``checkpoint_dir`` (or $ARGEN_CHECKPOINT_DIR) when it is there, else
    downloaded from the hub repository ``repo_id`` into the Hugging Face cache (or taken from it), or
    with ``url`` from that address into $ARGEN_CACHE (default ~/.cache/argen)/repo_id/filename."""
    for folder in (checkpoint_dir, os.environ.get(ENV_DIR)):
        if folder and (Path(folder) / filename).is_file():
            return Path(folder) / filename
    if checkpoint_dir is not None and local_files_only:
        raise DownloadError(f"{filename} is not in {checkpoint_dir}")
    if url is not None:
        return _from_url(url, repo_id, filename, local_files_only)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, local_files_only=local_files_only))
    except Exception as exc:  # offline, missing file, gated repo, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(
            f"cannot get {filename} from the hub repository {repo_id} ({type(exc).__name__}: {reason}). "
            f"If you are offline, download it elsewhere and pass checkpoint_dir=FOLDER "
            f"(CLI: --checkpoint-dir) or set ${ENV_DIR}."
        ) from None


def _from_url(url: str, repo_id: str, filename: str, local_files_only: bool) -> Path:
    cache = Path(os.environ.get("ARGEN_CACHE", Path.home() / ".cache" / "argen")) / repo_id / filename
    if cache.is_file():
        return cache
    hint = (f"download {url} elsewhere and put it at FOLDER/{filename}, then pass checkpoint_dir=FOLDER "
            f"(CLI: --checkpoint-dir) or set ${ENV_DIR}")
    if local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DownloadError(f"{filename} is not cached and downloads are off; {hint}")
    import torch

    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".part")
    try:
        torch.hub.download_url_to_file(url.replace("dl=0", "dl=1"), str(partial), progress=True)
    except Exception as exc:  # offline, moved file, ...
        raise DownloadError(f"cannot download {filename} from {url} ({type(exc).__name__}: {exc}); {hint}") from None
    partial.rename(cache)
    return cache
