"""``argen train dd``: distil a token-wise (LlamaGen) or scale-wise (VAR) teacher into a Distilled Decoding
student (DD1, arXiv 2412.17153) that maps noise to the whole sequence in one or two passes.

1. Pairs (:mod:`argen.train.dd_pairs`): the teacher's ``flow`` sampler maps per-token noise to token ids
   distributed as plain AR; the student learns that noise -> sequence map.
2. Student (:func:`student_from_teacher`): the teacher's architecture plus the DD deltas, initialised from
   the teacher's weights, its new parts at zero so that it starts as the teacher's network.
3. Objective (:func:`dd_loss`): per sample a restart point t (0 with probability ``t0_prob``, else uniform
   over 1 .. num_t - 1; the flow is token by token, so a clean prefix of the pair's own codes plus its
   noise maps to the same ids, which is what a 2-step run's second pass sees); on the positions from
   ``first_noisy(t)`` on, cross-entropy of the logits against the ids plus ``mse_weight`` times the
   squared error of the continuous tokens against the codes' vectors, divided by the codebook's mean
   squared norm (a scale-free weight: LlamaGen's codes are unit vectors, VAR's are not).

The loop is the generator trainer's (:mod:`argen.train.loop`: step-indexed batches, per-step seeds,
warm-up + cosine, clipping, EMA, checkpoints and ``--resume``); the result is a pretrained folder
(EMA weights + the teacher's tokenizer) that ``argen.load`` takes and ``sampler="dd"`` drives."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.families import student_family
from argen.images import make_grid
from argen.pipeline import ARPipeline
from argen.train.dd_pairs import PairsDataset, check_teacher, make_pairs
from argen.train.loop import (
    EMA,
    RecentMeans,
    TrainSettings,
    load_checkpoint,
    lr_at,
    make_accelerator,
    prior_train_time,
    save_checkpoint,
    seed_step,
    settings_dict,
    step_loader,
    train_time,
)


def student_from_teacher(teacher: nn.Module, tokenizer: Any, *, two_step_t: int | None = None,
                         split: int | None = None) -> tuple[nn.Module, dict[str, float]]:
    """The DD student of ``teacher`` (its family's student family, :func:`argen.families.student_family`:
    LlamaGen -> :class:`DDLlamaGen`, VAR -> :class:`DDVAR`; same dims, no dropout), initialised from it and
    bound to its tokenizer -> (student, init report).

    ``two_step_t``: the restart point of a 2-step run (default: 80/256 of LlamaGen's tokens as released,
    half of VAR's scales); ``split``: positions before it are snapped to the codebook (default two_step_t)."""
    student, report = student_family(teacher).from_teacher(teacher, two_step_t=two_step_t, split=split)
    student.bind_tokenizer(tokenizer)
    if not torch.allclose(student.code_vectors.float().cpu(), teacher.code_vectors.float().cpu(), atol=1e-6):
        raise ConfigError("the student's codebook differs from the space the teacher's flow maps noise into "
                          "(e.g. a VQ without l2-normalised codes for LlamaGen-DD)")
    return student, report


def draw_t(student: nn.Module, batch: int, t0_prob: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Restart points (B,) float: 0 with probability ``t0_prob``, else uniform over 1 .. num_t - 1 (torch's
    global RNG: the trainer seeds it per step)."""
    n = student.num_t
    later = torch.randint(1, max(n, 2), (batch,))
    t = torch.where((torch.rand(batch) < t0_prob) | (n < 2), torch.zeros_like(later), later)
    return t.float().to(device)


def dd_loss(model: nn.Module, student: nn.Module, noise: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor,
            t: torch.Tensor, mse_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective on a batch of pairs at restart points ``t`` -> (loss, {"ce", "mse"}). ``model`` is what
    runs the forward (the student, or its distributed wrapper), ``student`` the bare module."""
    book = student.code_vectors
    x0 = book[ids].to(noise.dtype)
    tokens, logits = model(student.perturb(x0, t, noise), labels, t)
    noisy = torch.arange(ids.shape[1], device=ids.device)[None] >= student.first_noisy(t).to(ids.device)[:, None]
    ce = F.cross_entropy(logits[noisy].float(), ids[noisy])
    mse = (tokens[noisy].float() - x0[noisy].float()).square().sum(-1).mean() / book.float().square().sum(-1).mean()
    return ce + mse_weight * mse, {"ce": ce.item(), "mse": mse.item()}


def train_dd(
    settings: TrainSettings,
    teacher: str | ARPipeline,
    pairs: int,
    *,
    two_step_t: int | None = None,
    split: int | None = None,
    options: dict[str, Any] | None = None,
    shard_size: int = 256,
    pair_batch_size: int = 32,
    ema_decay: float = 0.999,
    mse_weight: float = 1.0,
    t0_prob: float = 0.5,
) -> Path:
    """Make ``pairs`` pairs of ``teacher`` (a zoo name, folder or pipeline) under ``settings.out/pairs``
    (resumable), train its student on them and write the pipeline folder to ``settings.out``."""
    from argen.zoo import load

    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ConfigError(f"--pairs must be an integer >= 1, got {pairs!r}")
    if not 0.0 <= t0_prob <= 1.0:
        raise ConfigError(f"t0_prob must lie in [0, 1], got {t0_prob}")
    if mse_weight < 0:
        raise ConfigError(f"mse_weight must be >= 0, got {mse_weight}")
    name = teacher if isinstance(teacher, str) else (teacher.name or "teacher")
    pipe = load(teacher) if isinstance(teacher, str) else teacher
    check_teacher(pipe, name)
    out = Path(settings.out)
    acc = make_accelerator(settings)
    pipe.to(acc.device)
    t_pairs = time.time()
    pairs_meta = make_pairs(pipe, out, pairs, seed=settings.seed, shard_size=shard_size, batch_size=pair_batch_size,
                            options=options, accelerator=acc, progress=settings.progress, name=name)
    pairs_time = round(time.time() - t_pairs, 3)  # this run's share (finished shards are kept)
    dataset = PairsDataset(out, pairs)

    seed_step(settings.seed, "init")
    student, init_report = student_from_teacher(pipe.generator.cpu(), pipe.tokenizer.cpu(), two_step_t=two_step_t,
                                                split=split)
    ema = EMA(student, ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                            weight_decay=settings.weight_decay)
    meta = {"kind": "dd", "config": asdict(student.config), "teacher_id": pairs_meta["teacher_id"],
            "pairs": pairs, "pairs_seed": pairs_meta["seed"], "options": pairs_meta["options"],
            "t0_prob": t0_prob, "mse_weight": mse_weight}
    prior = prior_train_time(out, settings.resume)
    start = load_checkpoint(out, {"generator": student, "ema": ema.shadow}, {"generator": opt}, meta) \
        if settings.resume else 0
    ema.updates = start

    student.to(acc.device)
    bare = student
    model, opt = acc.prepare(student, opt)
    loader = step_loader(dataset, settings, acc, start, infinite=False)
    bar = tqdm(total=settings.steps, initial=start, disable=not (settings.progress and acc.is_main_process),
               desc="dd student")
    t0, recent = time.time(), RecentMeans()
    for step, (noise, ids, labels) in enumerate(loader, start=start):
        seed_step(settings.seed, step, acc.process_index)
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        noise, ids, labels = noise.to(acc.device), ids.to(acc.device), labels.to(acc.device)
        t = draw_t(bare, len(labels), t0_prob, acc.device)
        with acc.autocast():
            loss, logs = dd_loss(model, bare, noise, ids, labels, t, mse_weight)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if settings.grad_clip:
            acc.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        ema.update(bare)
        logs["loss"] = loss.item()
        recent.add(logs)
        bar.update(1)
        if step % settings.log_every == 0:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(out, done, {"generator": bare, "ema": ema.shadow}, {"generator": opt},
                                {**meta, "settings": settings_dict(settings), "train_time_s": train_time(prior, t0)})
    bar.close()
    elapsed = train_time(prior, t0)
    acc.wait_for_everyone()
    if acc.is_main_process:
        gen = ema.copy_to(copy.deepcopy(bare)).eval()
        result = ARPipeline(gen, pipe.tokenizer.to(acc.device), image_size=pipe.image_size, defaults={},
                            class_names=pipe.class_names, name=out.name)
        result.save_pretrained(out)
        _sample_grids(result, out)
        (out / "train.json").write_text(json.dumps({
            "kind": "dd", "teacher": name, "teacher_id": pairs_meta["teacher_id"], "pairs": pairs,
            "pair_options": pairs_meta["options"], "pairs_time_s": pairs_time,
            "steps": settings.steps, "final_losses": recent.means(),
            "train_time_s": elapsed, "settings": settings_dict(settings), "ema_decay": ema_decay,
            "mse_weight": mse_weight, "t0_prob": t0_prob, "init": init_report, "num_processes": acc.num_processes,
            "two_step_t": gen.default_t_list(2)[1], "split": gen.default_split,
        }, indent=2))
    return out


def _sample_grids(pipe: ARPipeline, out: Path) -> None:
    """samples/dd_{1,2}step.png: two images of each of the first ten classes."""
    classes = list(range(min(pipe.generator.num_classes, 10))) * 2
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for steps in (1, 2):
        images = pipe.generate(classes, seed=0, sampler="dd", steps=steps)
        make_grid(images, ncols=len(classes) // 2).save(out / "samples" / f"dd_{steps}step.png")
