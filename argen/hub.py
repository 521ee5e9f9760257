"""Fetching official weight files: a local folder first, then the Hugging Face hub (cached)."""
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
) -> Path:
    """Path of ``filename``: from ``checkpoint_dir`` (or $ARGEN_CHECKPOINT_DIR) when it is there, else
    downloaded from the hub repository ``repo_id`` into the Hugging Face cache (or taken from it)."""
    for folder in (checkpoint_dir, os.environ.get(ENV_DIR)):
        if folder and (Path(folder) / filename).is_file():
            return Path(folder) / filename
    if checkpoint_dir is not None and local_files_only:
        raise DownloadError(f"{filename} is not in {checkpoint_dir}")
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
