"""Distilled decoding (DD1, arXiv 2412.17153): a student maps noise to the whole sequence in one pass.

The noise is one Gaussian vector per token in the tokenizer's embedding space. Each step at position t
keeps the first ``first_noisy(t)`` tokens of the running sequence, resets the rest to the run's own
noise, and lets the student predict every position in one forward pass. The result is the next
step's input. A 1-step run is t = 0; a 2-step run restarts from a clean prefix (official: t = 80 of
LlamaGen's 256 tokens, scale 5 or 4 of VAR's 10). Positions before the split are snapped to the
codebook (argmax of the student's logits); the others keep the student's continuous vectors, which
the tokenizer decodes as they are.

Nothing is random but the noise, so a seed, or ``noise=`` itself, fixes the images. The student
samples without guidance or logit filters: the teacher's were distilled into it, and asking for
them is an error rather than a silent no-op.

Teacher-involved sampling (``teacher=``, the official combine procedure): a first student step gives
the positions before ``teacher_start`` (tokens, or VAR's scales; snapped to their nearest codes), the
teacher samples on from them up to ``t_list[1]`` with the sampling options (guidance, top-k, ...), and a
second student step at ``t_list[1]`` finishes the sequence from the teacher's tokens and the original
noise. A scale-wise teacher reads its prefix scale by scale, each seeing the coarser ones, as in training
(``teacher_prefix="block-causal"``, the default); the official sampler runs the prefix scales in one pass
without a mask, so coarse scales also see finer ones (``teacher_prefix="unmasked"`` reproduces it and the
published teacher-involved numbers).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from argen.errors import ConfigError
from argen.generators.protocol import DistilledGenerator, ScaleGenerator, TokenGenerator, generator_kind
from argen.samplers.ar import StepCallback, token_by_token
from argen.samplers.logits import SamplingOptions, draw
from argen.samplers.rng import Rng, given_or_normal
from argen.samplers.scales import scale_by_scale
from argen.samplers.stats import SamplerStats

TEACHER_PREFIXES = ("block-causal", "unmasked")


def _check_options(opts: SamplingOptions) -> None:
    bad = [n for n, on in (("cfg_scale", opts.guided), ("top_k", opts.top_k),
                           ("top_p", opts.top_p < 1.0), ("temperature", opts.temperature != 1.0),
                           ("greedy", opts.greedy)) if on]
    if bad:
        raise ConfigError(f"the dd sampler takes no {' / '.join(bad)}: a distilled student maps noise to tokens "
                          "deterministically, its teacher's guidance and sampling were distilled into it")


def step_positions(model: DistilledGenerator, steps: int | None, t_list: Sequence[int] | None) -> list[int]:
    """The steps' positions: ``t_list`` as given, or the model's released ones for ``steps`` (default 1)."""
    if t_list is None:
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise ConfigError(f"steps must be an integer, got {steps!r}")
        return model.default_t_list(1 if steps is None else steps)
    t_list = list(t_list)
    if not t_list or any(isinstance(t, bool) or not isinstance(t, int) for t in t_list):
        raise ConfigError(f"t_list must be a non-empty list of integers, got {t_list!r}")
    if steps is not None and steps != len(t_list):
        raise ConfigError(f"steps={steps} but t_list has {len(t_list)} positions; give one of them")
    if t_list[0] != 0:
        raise ConfigError(f"t_list must start at 0 (the first step starts from pure noise), got {t_list}")
    if any(b <= a for a, b in zip(t_list, t_list[1:])):
        raise ConfigError(f"t_list must be increasing, got {t_list}")
    if t_list[-1] >= model.num_t:
        raise ConfigError(f"t_list positions lie in [0, {model.num_t - 1}] for this model, got {t_list}")
    return t_list


def sample_dd(
    model: DistilledGenerator,
    cond: torch.Tensor,
    opts: SamplingOptions,
    rng: Rng,
    *,
    steps: int | None = None,
    t_list: Sequence[int] | None = None,
    split: int | None = None,
    noise: torch.Tensor | None = None,
    teacher: TokenGenerator | ScaleGenerator | None = None,
    teacher_start: int = 0,
    teacher_prefix: str = "block-causal",
    progress: bool = False,
    callback: StepCallback | None = None,
    callback_every: int = 1,
) -> tuple[torch.Tensor, SamplerStats]:
    """Tokens (B, N, C) float for class ids ``cond``. ``steps``: 1 or 2 at the model's released
    positions, or ``t_list`` explicit (increasing, from 0). ``split``: positions before it are snapped
    to the codebook (default: the released one). ``noise`` (B, N, C): the run's noise instead of a
    draw from the seed. ``teacher``: the teacher (token- or scale-wise) for teacher-involved sampling from
    ``teacher_start`` to ``t_list[1]`` (module doc; the sampling options are then the teacher's).
    ``callback(step, tokens)`` after every ``callback_every`` steps."""
    if teacher is not None:
        return _with_teacher(model, cond, opts, rng, teacher, teacher_start, teacher_prefix, steps, t_list, split,
                             noise)
    _check_options(opts)
    start = time.perf_counter()
    t_list = step_positions(model, steps, t_list)
    split = _split(model, split)
    b = cond.shape[0]
    z = given_or_normal((b, model.seq_len, model.token_dim), rng, noise, cond.device)
    stats = SamplerStats("dd", b, model.seq_len, guided_rows=b)
    x = z
    for i, t in enumerate(tqdm(t_list, disable=not progress, desc="dd", leave=False)):
        x = _step(model, x, z, cond, t, split)
        stats.forward_passes += 1
        first = int(model.first_noisy(torch.tensor([float(t)], device=z.device))[0])
        stats.accepted_history.append(float(model.seq_len - first))  # positions this pass predicts
        if callback is not None and ((i + 1) % callback_every == 0 or i + 1 == len(t_list)):
            callback(i + 1, x)
    stats.wall_time_s = time.perf_counter() - start
    return x, stats


def _split(model: DistilledGenerator, split: int | None) -> int:
    split = model.default_split if split is None else split
    if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= model.num_t:
        raise ConfigError(f"split must be an integer in [0, {model.num_t}], got {split!r}")
    return split


def _step(model: DistilledGenerator, x: torch.Tensor, z: torch.Tensor, cond: torch.Tensor, t: int,
          split: int) -> torch.Tensor:
    """One student pass at position t: keep x before it, the noise z from it on, predict, assemble."""
    tt = torch.full((x.shape[0],), float(t), device=x.device)
    tokens, logits = model.final_predict(model.perturb(x, tt, z), cond, tt)
    return model.final_sequence(tokens, logits, split)


def _teacher_positions(model: DistilledGenerator, teacher: TokenGenerator | ScaleGenerator) -> str:
    """The teacher's kind, after checking that its positions are the student's (tokens, or whole scales)."""
    kind = generator_kind(teacher)
    if kind == "token":
        starts = list(range(teacher.seq_len + 1))
    elif kind == "scale":
        starts = [0]
        for pn in teacher.patch_nums:
            starts.append(starts[-1] + pn * pn)
    else:
        raise ConfigError(f"teacher-involved sampling needs a token- or scale-wise teacher, got a {kind!r} one")
    ours = model.first_noisy(torch.arange(model.num_t, dtype=torch.float32)).tolist() + [model.seq_len]
    if teacher.vocab_size != model.code_vectors.shape[0] or starts != ours:
        raise ConfigError(f"the {kind}-wise teacher ({teacher.vocab_size} codes, {teacher.seq_len} tokens) is not "
                          f"this student's ({model.code_vectors.shape[0]} codes, {model.seq_len} tokens in "
                          f"{model.num_t} steps)")
    return kind


def _with_teacher(model: DistilledGenerator, cond: torch.Tensor, opts: SamplingOptions, rng: Rng,
                  teacher: TokenGenerator | ScaleGenerator, teacher_start: int, teacher_prefix: str,
                  steps: int | None, t_list: Sequence[int] | None, split: int | None,
                  noise: torch.Tensor | None) -> tuple[torch.Tensor, SamplerStats]:
    """The official combine procedure (eval_combine_sample.py / combine_sample.py)."""
    start = time.perf_counter()
    kind = _teacher_positions(model, teacher)
    if teacher_prefix not in TEACHER_PREFIXES:
        raise ConfigError(f"teacher_prefix is one of {', '.join(TEACHER_PREFIXES)}, got {teacher_prefix!r}")
    t0, t1 = step_positions(model, 2 if steps is None and t_list is None else steps, t_list)
    if isinstance(teacher_start, bool) or not isinstance(teacher_start, int) or not 0 <= teacher_start < t1:
        raise ConfigError(f"teacher_start must be an integer in [0, {t1 - 1}] (before t_list[1]), "
                          f"got {teacher_start!r}")
    split = _split(model, split)
    b = cond.shape[0]
    z = given_or_normal((b, model.seq_len, model.token_dim), rng, noise, cond.device)
    first = model.first_noisy(torch.tensor([float(teacher_start), float(t1)]))
    n_prefix, n_taught = int(first[0]), int(first[1])
    stats = SamplerStats("dd", b, model.seq_len, guided_rows=2 * b if opts.guided else b)
    prefix = None
    if teacher_start:
        prefix = model.nearest_codes(_step(model, z, z, cond, t0, split))[:, :n_prefix]
        stats.forward_passes += 1

    def pick(i: int, logits: torch.Tensor) -> torch.Tensor:
        return draw(logits, opts, rng)

    if kind == "token":
        ids, taught = token_by_token(teacher, cond, opts, pick, "dd", progress=False, callback=None,
                                     callback_every=1, compile=False, prefix=prefix, length=t1)
    else:
        ids, taught = scale_by_scale(teacher, cond, opts, pick, "dd", rng, more_smooth=False, progress=False,
                                     callback=None, callback_every=1, prefix=prefix, stop=t1,
                                     prefix_pass=teacher_prefix)
    stats.forward_passes += taught.forward_passes
    x = torch.cat([model.code_vectors[ids].to(z.dtype), z[:, n_taught:]], dim=1)
    if t1 < model.num_t:
        x = _step(model, x, z, cond, t1, split)
        stats.forward_passes += 1
    stats.wall_time_s = time.perf_counter() - start
    return x, stats
