"""Training pairs for a distilled-decoding student: (noise, token ids, class label), made by the teacher's
``flow`` sampler (:mod:`argen.samplers.flow`), which maps per-token Gaussian noise deterministically to
token ids distributed exactly as plain AR.

Pair i depends on (teacher, sampling options, seed, i) only: its label and its noise come from generators
seeded with ``derive_seed(seed, "label", i)`` and ``derive_seed(seed, i)`` (the noise the flow sampler
itself draws for image i of a request with per-image streams), so the pairs are the same whatever the
batch size, the shard size or the number of processes. Pairs are written in shards of ``shard_size``
(``DIR/pairs/{start:08d}.safetensors``: noise, ids, labels; the shard's identity in its metadata) with a
``meta.json`` that a rerun checks: finished shards are kept, so an interrupted run resumes, and a folder
made by another teacher, seed or layout is refused.

Noise is stored as float16 and the flow runs on the float16-rounded values: the stored noise is then
exactly the noise behind the ids (a float16 round-trip of float32 noise would move a few vectors across
the boundary between two codes' regions), at half the bytes (VAR-d16: 44 KB per pair instead of 87 KB)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.generators.protocol import generator_kind
from argen.samplers.flow import ODE_STEPS
from argen.samplers.rng import RowStreams, derive_seed, normal

PAIRS_DIR, META_NAME, FORMAT = "pairs", "meta.json", 1
TEACHER_KINDS = ("token", "scale")
# what every shard of a folder shares; a rerun with another value is refused (the count may grow)
LAYOUT_KEYS = ("format", "teacher_id", "seed", "options", "shard_size", "seq_len", "token_dim", "num_classes",
               "noise_dtype")


def check_teacher(pipe: Any, name: str) -> None:
    """ConfigError unless the pipeline's generator is token-wise or scale-wise (what the flow sampler maps)."""
    kind = generator_kind(pipe.generator)
    if kind not in TEACHER_KINDS:
        raise ConfigError(f"teacher {name} is a {kind!r} model: distilled decoding needs a token-wise (LlamaGen) "
                          "or scale-wise (VAR) teacher, whose codes the noise -> token flow maps to")


def teacher_identity(pipe: Any) -> str:
    """A digest of the teacher's weights and codebook: the pairs are a function of them."""
    h = hashlib.blake2b(digest_size=12)
    state = pipe.generator.state_dict()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    h.update(pipe.generator.code_vectors.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pair_labels(seed: int, start: int, count: int, num_classes: int) -> torch.Tensor:
    """Labels of pairs start .. start+count-1, each uniform from its own seed."""
    return torch.tensor([int(torch.randint(num_classes, (1,),
                                           generator=torch.Generator().manual_seed(derive_seed(seed, "label", i))))
                         for i in range(start, start + count)], dtype=torch.long)


def pair_noise(seed: int, start: int, count: int, seq_len: int, token_dim: int) -> torch.Tensor:
    """Noise (count, seq_len, token_dim) of those pairs, float16: image i's stream as the samplers seed it."""
    streams = RowStreams.from_seed(seed, start, count, "cpu")
    return normal((count, seq_len, token_dim), streams, "cpu").half()


def _shard(folder: Path, start: int) -> Path:
    return folder / PAIRS_DIR / f"{start:08d}.safetensors"


def _check_meta(folder: Path, meta: dict[str, Any]) -> None:
    path = folder / PAIRS_DIR / META_NAME
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    diff = [k for k in LAYOUT_KEYS if old.get(k) != meta[k]]
    if diff:
        raise ConfigError(f"{folder / PAIRS_DIR} holds pairs of another teacher or layout ({', '.join(diff)} "
                          "differ): use another --out, or delete that folder")


def _shard_ok(path: Path, meta: dict[str, Any], start: int, count: int) -> bool:
    """A finished shard of this layout holding at least ``count`` pairs (pair i depends on i alone, so the
    first rows of a longer last shard are the pairs of a shorter request; a short last shard of a smaller
    request is not finished for a larger one). A shard of another teacher or seed is a ConfigError."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        info = f.metadata() or {}
    if info.get("teacher_id") != meta["teacher_id"] or info.get("seed") != str(meta["seed"]):
        raise ConfigError(f"pairs shard {path} was made by another teacher or seed: delete it or use another --out")
    return info.get("start") == str(start) and int(info.get("count", -1)) >= count


def make_pairs(
    pipe: Any,
    folder: str | os.PathLike,
    count: int,
    *,
    seed: int = 0,
    shard_size: int = 256,
    batch_size: int = 32,
    options: dict[str, Any] | None = None,
    accelerator: Any = None,
    progress: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Write ``count`` pairs of the teacher ``pipe`` under ``folder/pairs`` (missing shards only; process r
    of w makes shards r, r + w, ...) and return the folder's meta. ``options``: the flow sampler's (the
    teacher's sampling options: cfg_scale, top_k, ..., ode_steps), over the pipeline's defaults."""
    from safetensors.torch import save_file

    from argen.samplers import sample

    name = name or getattr(pipe, "name", None) or "teacher"
    check_teacher(pipe, name)
    for what, value, low in (("pairs", count, 1), ("shard_size", shard_size, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    gen = pipe.generator
    opts = {**pipe.defaults, "ode_steps": ODE_STEPS, **(options or {})}  # recorded: the pairs depend on it
    folder = Path(folder)
    meta = {"format": FORMAT, "teacher": name, "teacher_id": teacher_identity(pipe), "seed": seed,
            "options": opts, "shard_size": shard_size, "seq_len": gen.seq_len,
            "token_dim": int(gen.code_vectors.shape[1]), "num_classes": gen.num_classes, "noise_dtype": "float16",
            "ids_dtype": "int16" if gen.vocab_size <= 2**15 else "int32", "pairs": count,
            "seeding": "pair i: label from derive_seed(seed, 'label', i), noise from derive_seed(seed, i) "
                       "(argen.samplers.rng); the flow runs on the float16 noise"}
    meta = json.loads(json.dumps(meta))  # as the file holds it (tuples -> lists)
    _check_meta(folder, meta)
    device = next(gen.parameters()).device
    if not (folder / PAIRS_DIR / META_NAME).is_file():  # bad options fail here, before the meta records them
        z = pair_noise(seed, 0, 1, meta["seq_len"], meta["token_dim"]).float().to(device)
        sample(gen, pair_labels(seed, 0, 1, gen.num_classes).to(device), sampler="flow", noise=z, **opts)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if accelerator:
        accelerator.wait_for_everyone()
    meta_path = folder / PAIRS_DIR / META_NAME
    if meta_path.is_file():  # the folder holds the most pairs ever made in it
        meta["pairs"] = max(count, json.loads(meta_path.read_text())["pairs"])
    if accelerator:
        accelerator.wait_for_everyone()
    if rank == 0:
        (folder / PAIRS_DIR).mkdir(parents=True, exist_ok=True)
        (folder / PAIRS_DIR / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    starts = list(range(0, count, shard_size))[rank::world]
    todo = [s for s in starts if not _shard_ok(_shard(folder, s), meta, s, min(shard_size, count - s))]
    ids_dtype = getattr(torch, meta["ids_dtype"])
    with tqdm(total=len(starts), initial=len(starts) - len(todo), unit="shard", desc=f"pairs ({rank}/{world})",
              disable=not (progress and rank == 0)) as bar:
        for s in todo:
            n = min(shard_size, count - s)
            labels = pair_labels(seed, s, n, gen.num_classes)
            noise = pair_noise(seed, s, n, meta["seq_len"], meta["token_dim"])
            ids = []
            for b in range(0, n, batch_size):
                z = noise[b : b + batch_size].float().to(device)
                codes, _ = sample(gen, labels[b : b + batch_size].to(device), sampler="flow", noise=z, **opts)
                ids.append(codes.cpu())
            path = _shard(folder, s)
            tmp = path.with_name(f"{path.stem}.rank{rank}.part")
            save_file({"noise": noise.contiguous(), "ids": torch.cat(ids).to(ids_dtype).contiguous(),
                       "labels": labels.contiguous()}, str(tmp),
                      metadata={"teacher_id": meta["teacher_id"], "seed": str(seed), "start": str(s), "count": str(n)})
            os.replace(tmp, path)
            bar.update(1)
    if accelerator:
        accelerator.wait_for_everyone()
    return meta


class PairsDataset(Dataset):
    """The first ``count`` pairs of a folder: item i -> (noise float32 (N, C), ids int64 (N,), label).

    Items are read from the memory-mapped shards as they are asked for (1.2M VAR-d16 pairs are 53 GB of
    noise: more than a training machine's memory), one open file per shard; ``noise``, ``ids`` and
    ``labels`` give the whole set as tensors (small sets, tests)."""

    FIELDS = ("noise", "ids", "labels")

    def __init__(self, folder: str | os.PathLike, count: int | None = None) -> None:
        folder = Path(folder)
        path = folder / PAIRS_DIR / META_NAME
        if not path.is_file():
            raise ConfigError(f"no pairs in {folder / PAIRS_DIR} (no {META_NAME})")
        self.meta = json.loads(path.read_text())
        self.count = self.meta["pairs"] if count is None else count
        if not 0 <= self.count <= self.meta["pairs"]:
            raise ConfigError(f"{folder / PAIRS_DIR} holds {self.meta['pairs']} pairs, {self.count} asked for")
        self.shards = []
        for s in range(0, self.count, self.meta["shard_size"]):
            n = min(self.meta["shard_size"], self.count - s)
            if not _shard_ok(_shard(folder, s), self.meta, s, n):
                raise ConfigError(f"pairs shard {_shard(folder, s)} is missing or incomplete: rerun to make it")
            self.shards.append(str(_shard(folder, s)))
        self._open: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own files
        return {**self.__dict__, "_open": {}}

    def _file(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard not in self._open:
            self._open[shard] = safe_open(self.shards[shard], "pt")
        return self._open[shard]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not -self.count <= i < self.count:
            raise IndexError(f"pair {i} of {self.count}")
        shard, j = divmod(i % self.count, self.meta["shard_size"])
        f = self._file(shard)
        noise, ids, label = (f.get_slice(k)[j : j + 1][0] for k in self.FIELDS)
        return noise.float(), ids.long(), label

    def _all(self, name: str) -> torch.Tensor:
        rows = self.count - (len(self.shards) - 1) * self.meta["shard_size"]  # of the last shard
        parts = [self._file(k).get_tensor(name) for k in range(len(self.shards))]
        return torch.cat(parts[:-1] + [parts[-1][:rows]]) if parts else torch.empty(0)

    @property
    def noise(self) -> torch.Tensor:
        return self._all("noise")

    @property
    def ids(self) -> torch.Tensor:
        return self._all("ids")

    @property
    def labels(self) -> torch.Tensor:
        return self._all("labels")
