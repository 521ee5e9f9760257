"""Sampling a model to an ADM sample batch on any number of processes (accelerate / torchrun).

The images are cut into shards of ``batch_size`` consecutive global indices, and process r of w
takes shards r, r + w, ... Each image is drawn from its own stream seeded from (seed, its global
index) where the sampler takes per-image streams (``ar`` on token- and scale-wise models: the output
then depends on (model, options, seed) only); the other samplers draw the shard that starts at index i
from one stream seeded from (seed, i), so there the batch size matters too. Never the number of
processes (bit for bit given the same number of CPU threads per process: on the CPU the float
round-off, and so now and then a decoded pixel, depends on it). Finished shards are files, so an
interrupted run resumes where it stopped. Labels follow the VAR/MAR
protocol: ``per_class`` images of each class, class-major.

    sample_to_npz(pipe, "out/run", classes=range(1000), per_class=50, seed=0, cfg_scale=1.5)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from argen.errors import ConfigError
from argen.eval.batches import pack_npz, save_pngs

SAMPLES_NAME, META_NAME, SHARDS_DIR, PNG_DIR = "samples.npz", "meta.json", "shards", "png"
QUANTISATION = "uint8 = floor((x + 1) / 2 * 255 + 0.5), i.e. DiT's clamp(127.5 x + 128) (argen.images.to_uint8)"


def class_labels(classes: Iterable[int], per_class: int) -> np.ndarray:
    """``per_class`` copies of every class, class-major (MAR's ``np.arange(1000).repeat(50)``)."""
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    return np.repeat(np.asarray(list(classes), dtype=np.int64), per_class)


def _shard_path(outdir: Path, start: int) -> Path:
    return outdir / SHARDS_DIR / f"{start:07d}.npz"


def _check_meta(outdir: Path, meta: dict) -> None:
    """Resuming is only safe with the settings that wrote the finished shards."""
    path = outdir / META_NAME
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in meta["settings"] if old.get("settings", {}).get(k) != meta["settings"][k])
        if diff:
            raise ConfigError(f"{outdir} holds samples made with other settings ({', '.join(diff)} differ); "
                              "use another output folder or delete it")


def sample_to_npz(
    pipe: Any,
    outdir: str | os.PathLike,
    *,
    labels: np.ndarray,
    seed: int = 0,
    batch_size: int = 32,
    sampler: str = "ar",
    png: bool = False,
    accelerator: Any = None,
    progress: bool = True,
    **options: Any,
) -> Path | None:
    """Generate one image per label into ``outdir/samples.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` labels)
    with ``meta.json`` and, with ``png``, ``outdir/png/{index:06d}.png``. Returns the .npz path on
    the main process (None elsewhere)."""
    import torch
    from tqdm import tqdm

    from argen.images import to_uint8
    from argen.version import __version__

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    outdir = Path(outdir)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise ConfigError("labels must be a non-empty list of class ids")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    is_main = rank == 0
    meta = {
        "settings": {"model": getattr(pipe, "name", None), "sampler": sampler, "options": {**pipe.defaults, **options},
                     "seed": seed, "batch_size": batch_size, "labels_sha": _labels_digest(labels),
                     "image_size": pipe.image_size},
        "images": int(len(labels)),
        "seeding": "image i: argen.samplers.derive_seed(seed, i) where the sampler takes per-image streams, "
                   "else the shard starting at i: derive_seed(seed, i)",
        "quantisation": QUANTISATION,
        "argen": __version__,
    }
    _check_meta(outdir, meta)
    if accelerator:
        accelerator.wait_for_everyone()  # every process checked before the main one writes meta
    if is_main:
        (outdir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        (outdir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    final = outdir / SAMPLES_NAME
    starts = list(range(0, len(labels), batch_size))[rank::world]
    todo = [s for s in starts if not _shard_path(outdir, s).is_file()]
    if final.is_file():
        todo = []
    with tqdm(total=len(starts), initial=len(starts) - len(todo), desc=f"sampling (process {rank}/{world})",
              unit="shard", disable=not (progress and is_main)) as bar:
        for s in todo:
            ids = labels[s : s + batch_size]
            with torch.inference_mode():
                images = pipe.generate(**pipe.request(ids.tolist()), seed=seed, first_index=s, sampler=sampler,
                                       output_type="pt", batch_size=len(ids), **options)
            arr = to_uint8(images).numpy()
            if png:
                save_pngs(outdir / PNG_DIR, arr, start=s)
            path = _shard_path(outdir, s)
            tmp = path.with_name(path.stem + f".rank{rank}.part")
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=arr, arr_1=ids)
            os.replace(tmp, path)
            bar.update(1)
    if accelerator:
        accelerator.wait_for_everyone()
    if not is_main:
        return None
    if not final.is_file():
        all_starts = range(0, len(labels), batch_size)
        missing = [s for s in all_starts if not _shard_path(outdir, s).is_file()]
        if missing:
            raise ConfigError(f"shards missing in {outdir / SHARDS_DIR}: {missing[:5]}...")
        with np.load(_shard_path(outdir, 0)) as first:
            image_shape = first["arr_0"].shape[1:]
        pack_npz(final, _read_shards(outdir, all_starts), len(labels), image_shape, labels)
    return final


def _read_shards(outdir: Path, starts: Iterable[int]):
    for s in starts:
        with np.load(_shard_path(outdir, s)) as shard:
            yield shard["arr_0"]


def _labels_digest(labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(labels.tobytes()).hexdigest()[:16]
