"""What every argen trainer shares: settings, the accelerate set-up, a deterministic step-indexed
data stream (so ``--resume`` continues exactly where it stopped, on any number of processes), the
run's randomness as a function of (seed, step) (:func:`run_seed`, :func:`seed_step`: the same command
twice gives the same weights, and a resumed run ends where an uninterrupted one does), the
learning-rate schedule, EMA, and checkpoints (safetensors weights + optimizer state + JSON meta)."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from argen.errors import CheckpointError, ConfigError
from argen.samplers.rng import derive_seed

logger = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainSettings:
    out: str
    data: str = "shapes"  # "shapes" or an image folder
    resolution: int = 64
    steps: int = 1000
    batch_size: int = 32  # per process
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    num_workers: int = 0
    resume: bool = False
    progress: bool = True
    # augmentation of image folders (the shapes set draws its own positions and rotations): off by
    # default, since a mirrored or shifted letter, digit, logo or text is another image
    hflip: bool = False
    random_crop: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("steps", "batch_size", "resolution"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("hflip", "random_crop"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def augment(self) -> dict[str, bool]:
        """The augmentation this run applies to an image folder, as the run's metadata records it."""
        return {"hflip": self.hflip, "random_crop": self.random_crop}


# the seed of one kind of draw of a run: ("step", step, rank), ("augment", position), ("order", epoch)
run_seed = derive_seed


def seed_step(seed: int, step: int | str, rank: int = 0) -> None:
    """Seed torch's global RNG (CPU and every CUDA device) for ``step`` of process ``rank`` (``"init"``:
    the initial weights, the same on every process). Every trainer calls it before building its
    modules and at the start of each step, so dropout, class dropout, MAR's masks and diffusion noise,
    FlowAR's times and noise, posterior samples and dead-code picks replay exactly after ``--resume``."""
    torch.manual_seed(run_seed(seed, "step", step, rank))


def make_accelerator(settings: TrainSettings):
    """An Accelerator: bf16 autocast where the device supports it (``auto``), plain float32 on CPU."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    mp = settings.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    set_seed(settings.seed + acc.process_index)
    return acc


class StepBatchSampler(Sampler[list]):
    """Batches indexed by step: process ``rank`` of ``world`` takes positions
    ((step * world + rank) * batch + i); for a finite data set position p is item perm_e(p mod n) of
    a permutation seeded per epoch e = p // n. Infinite data sets (shapes) use the position itself.
    With ``item_seeds`` each entry is (item, seed of its augmentation), the seed a function of the run's
    seed and the position: the images of a step are the same however the run got there (resumed, any
    number of loader workers)."""

    def __init__(self, n: int | None, batch: int, rank: int, world: int, start_step: int, steps: int, seed: int,
                 item_seeds: bool = False) -> None:
        self.n, self.batch, self.rank, self.world = n, batch, rank, world
        self.start, self.steps, self.seed, self.item_seeds = start_step, steps, seed, item_seeds
        self._perm: tuple[int, torch.Tensor] | None = None

    def _item(self, pos: int) -> int | tuple[int, int]:
        if self.n is None:
            item = pos
        else:
            epoch, off = divmod(pos, self.n)
            if self._perm is None or self._perm[0] != epoch:
                g = torch.Generator().manual_seed(run_seed(self.seed, "order", epoch))
                self._perm = (epoch, torch.randperm(self.n, generator=g))
            item = int(self._perm[1][off])
        return (item, run_seed(self.seed, "augment", pos)) if self.item_seeds else item

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list]:
        for step in range(self.start, self.steps):
            base = (step * self.world + self.rank) * self.batch
            yield [self._item(base + i) for i in range(self.batch)]


def step_loader(dataset: Dataset, settings: TrainSettings, acc, start_step: int, infinite: bool) -> DataLoader:
    """The run's batches from ``start_step`` on (see :class:`StepBatchSampler`); a data set that draws
    augmentation (``seeded_items``) gets each item's seed with its index."""
    sampler = StepBatchSampler(
        None if infinite else len(dataset),
        settings.batch_size,
        acc.process_index,
        acc.num_processes,
        start_step,
        settings.steps,
        settings.seed,
        item_seeds=getattr(dataset, "seeded_items", False),
    )
    return DataLoader(dataset, batch_sampler=sampler, num_workers=settings.num_workers)


class RecentMeans:
    """Mean of each logged value over the last ``window`` steps: what train.json reports as the final
    losses (a single batch's MAR loss swings 0.03 .. 1.1 with the drawn diffusion timesteps)."""

    def __init__(self, window: int = 100):
        self.steps: deque[dict[str, float]] = deque(maxlen=window)

    def add(self, logs: dict[str, float]) -> None:
        self.steps.append(dict(logs))

    def means(self) -> dict[str, float]:
        keys = dict.fromkeys(k for logs in self.steps for k in logs)
        return {k: sum(v) / len(v) for k in keys if (v := [float(s[k]) for s in self.steps if k in s])}


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    t = (step - settings.warmup_steps) / max(settings.steps - settings.warmup_steps, 1)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class EMA:
    """Exponential moving average of a model's parameters (decay warms up from 0). Floating-point
    buffers are kept too but copied, not averaged: they are not trained, and averaging a -inf mask
    entry gives NaN (-inf + 0 * (-inf - -inf))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.params = {k for k, _ in model.named_parameters()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if k in self.params:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            elif k in self.shadow:
                self.shadow[k].copy_(v.detach())

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict({**model.state_dict(), **self.shadow})
        return model


def _state_path(out: Path) -> Path:
    return out / CHECKPOINT_DIR / "state.json"


def save_checkpoint(
    out: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
) -> None:
    """Weights as safetensors, optimizer states with torch.save (tensors and numbers only), meta JSON."""
    from safetensors.torch import save_file

    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        state = module if isinstance(module, dict) else module.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / f"{name}.safetensors"))
    for name, opt in optimizers.items():
        torch.save(opt.state_dict(), folder / f"{name}.optim.pt")
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({**meta, "step": step}, indent=2))
    os.replace(tmp, _state_path(out))


def load_checkpoint(
    out: Path, modules: dict[str, nn.Module | dict], optimizers: dict[str, torch.optim.Optimizer], meta: dict[str, Any]
) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the step to continue from.
    A checkpoint of another model/config is an error naming the differences (a meta key the checkpoint
    predates is not compared). A dict of tensors (training state outside the modules, e.g. the
    dead-code usage) that an older checkpoint lacks keeps its value, with a warning."""
    from safetensors.torch import load_file

    path = _state_path(out)
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}")
    saved = json.loads(path.read_text())
    diffs = [
        f"{k}: checkpoint {saved[k]!r} vs now {v!r}"
        for k, v in meta.items()
        if k != "settings" and k in saved and saved[k] != v
    ]
    if diffs:
        raise CheckpointError(
            f"--resume: the checkpoint in {out} was trained with another configuration: " + "; ".join(diffs)
        )
    folder = out / CHECKPOINT_DIR
    for name, module in modules.items():
        file = folder / f"{name}.safetensors"
        if isinstance(module, dict) and not file.is_file():
            logger.warning(
                "--resume: %s has no %s (an older checkpoint): the run continues, not bit-exactly", folder, file.name
            )
            continue
        state = load_file(str(file))
        if isinstance(module, dict):
            for k in module:
                module[k].copy_(state[k])
        else:
            module.load_state_dict(state)
    for name, opt in optimizers.items():
        opt.load_state_dict(torch.load(folder / f"{name}.optim.pt", map_location="cpu", weights_only=True))
    return int(saved["step"])


def prior_train_time(out: Path, resume: bool) -> float:
    """Seconds of training already spent in the checkpoint being resumed (0 for a new run)."""
    path = _state_path(out)
    if not resume or not path.is_file():
        return 0.0
    return float(json.loads(path.read_text()).get("train_time_s", 0.0))


def train_time(prior: float, t0: float) -> float:
    """Cumulative training seconds: ``prior`` from a resumed checkpoint plus this run since ``t0``.

    Kept to the millisecond so that a short resumed run still adds time (0.1 s rounding hid it)."""
    return round(prior + time.time() - t0, 3)


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return asdict(settings)
