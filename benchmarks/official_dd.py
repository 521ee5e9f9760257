"""argen's Distilled Decoding students against the OFFICIAL student code, side by side on one machine:

    python benchmarks/official_dd.py --official-dir /tmp/dd_official
        [--models dd-var-d16 dd-llamagen-b] [--batch 1 4] [--repeats 2] [--seed 0]
        [--threads N] [--out /tmp/official_dd.json]

``--official-dir`` is a work tree of microsoft/distilled_decoding (its ``VAR/`` and ``LlamaGen/`` folders;
only the ``.py`` files are needed, e.g. ``git --git-dir=<mirror> archive HEAD -- '*.py' | tar -x -C DIR``,
which also works in a mirror that lacks the binary assets, after a complaint about them). Its modules
are imported at run time only (nothing of it is copied here): ``VAR/models`` (``build_vae_dd`` ->
``DD_Model``) and ``LlamaGen/autoregressive/models/dd.py`` (``GPT_models['GPT-B']`` -> ``DDTransformer``).

Released architectures, random weights, float32, the CPU. Per student:

1. Equality. One random state dict (drawn from the official model's own key set: weights N(0, 0.02^2),
   RMSNorm weights 1 + N(0, 0.1^2), VAR's ``scale_mul_1H11`` its constructor value + N(0, 0.1^2); buffers as
   constructed) is loaded strictly into the official model and through argen's loader
   (:func:`argen.convert.dd_var.load_dd_var` / :func:`argen.convert.dd_llamagen.load_dd_llamagen`) into
   argen's. The tokenizers are argen's (``MultiScaleVQVAE`` "vae_ch160v4096z32", ``VQTokenizer`` "VQ-16")
   with a N(0, 1) codebook; the official VAR student gets the same VQ-VAE weights loaded into the official
   VQVAE that ``build_vae_dd`` builds (it reads its codebook from it), the official LlamaGen student the
   l2-normalised codebook as ``codebook=`` (as ``eval_fewstep.py`` passes it). Same labels, noise and t on
   both sides; compared: the forward's (tokens, logits) at t = 0 and at the released second step, and the
   final sequences of a 1-step and a 2-step run (the official loops of ``VAR/sample.py`` /
   ``LlamaGen/autoregressive/sample/eval_fewstep.py``: ``perturb_data`` with the run's noise,
   ``final_predict`` (LlamaGen: with the nearest-codebook ids as ``idx``), ``get_final_sequence`` /
   ``get_final_x_BLC`` at the released split) against ``argen.samplers.sample(student, labels,
   sampler="dd", t_list=..., split=..., noise=noise)``. Max abs differences, argmax disagreements, and the
   number of final positions that differ by more than 1e-3.
2. Timing. Median wall time of ``--repeats`` runs per batch size of the 1-step and 2-step token
   generation (no image decoding; the equality runs are the warm-up), ``ratio = argen / official``
   (below 1: argen faster). Both under ``torch.no_grad()`` in the same process.

Run-time accommodations for the official code on the CPU (no source edits):

* nothing CUDA-only is hit: ``dist.get_device()`` falls back to "cpu", the fused / flash kernels are optional
  imports (not installed: the plain ``scaled_dot_product_attention`` path runs), and
  ``torch.cuda.amp.autocast(enabled=False)`` is a no-op (a FutureWarning, silenced);
* ``build_vae_dd`` replaces ``reset_parameters`` of ``nn.Linear``, ``nn.LayerNorm``, the conv and batch-norm
  classes by no-ops process-wide; the originals are restored right after the call;
* VAR's and LlamaGen's folders both define top-level ``models`` / ``utils`` / ``dist`` modules, so each is
  imported with its own folder first on ``sys.path`` and those module names are dropped from
  ``sys.modules`` afterwards;
* the official models are put in eval mode (VAR-DD d16 is built with drop_path_rate 0.067).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import argen.samplers
from argen.convert.dd_llamagen import load_dd_llamagen
from argen.convert.dd_var import load_dd_var
from argen.tokenizers.msvq import MultiScaleVQConfig, MultiScaleVQVAE
from argen.tokenizers.vq import VQConfig, VQTokenizer

CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]
MODELS = ("dd-var-d16", "dd-llamagen-b")
_TOP_LEVEL = ("models", "utils", "dist", "autoregressive", "tokenizer")
_INIT_PATCHED = (nn.Linear, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Conv1d, nn.Conv2d,
                 nn.ConvTranspose1d, nn.ConvTranspose2d)


# -- importing the official modules ---------------------------------------------------------------
@contextlib.contextmanager
def official_path(folder: Path):
    """``folder`` first on sys.path; afterwards the official top-level module names are forgotten so that
    the other folder's same-named modules can be imported."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in list(sys.modules):
            if name.split(".")[0] in _TOP_LEVEL:
                del sys.modules[name]


@contextlib.contextmanager
def keep_reset_parameters():
    """Undo the official builders' process-wide ``reset_parameters`` no-ops."""
    saved = {cls: cls.__dict__.get("reset_parameters") for cls in _INIT_PATCHED}
    try:
        yield
    finally:
        for cls, fn in saved.items():
            if fn is None:
                if "reset_parameters" in cls.__dict__:
                    delattr(cls, "reset_parameters")
            else:
                cls.reset_parameters = fn


# -- shared helpers -------------------------------------------------------------------------------
def random_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict over ``model``'s keys: parameters drawn as in the module doc, buffers kept."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = {}
    for k, v in model.state_dict().items():
        if k not in params or not v.is_floating_point():
            out[k] = v.detach().clone()
            continue
        noise = torch.randn(v.shape, generator=g, dtype=torch.float32)
        if k.endswith("scale_mul_1H11"):
            out[k] = v.detach().float() + 0.1 * noise
        elif k.endswith("norm.weight"):  # LlamaGen's RMSNorm scales
            out[k] = 1.0 + 0.1 * noise
        else:
            out[k] = 0.02 * noise
    return out


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb) or not torch.equal(a[~fa], b[~fb]):
        return math.inf  # non-finite entries (the -inf of passed-through logits) must agree exactly
    return float((a[fa] - b[fb]).abs().max()) if fa.any() else 0.0


def compare_forward(off: tuple, ours: tuple) -> dict:
    (ot, ol), (at, al) = off, ours
    return {"tokens_max_abs_diff": max_abs(ot, at), "logits_max_abs_diff": max_abs(ol, al),
            "logits_max_abs": float(ol.abs().max()),
            "argmax_disagreements": int((ol.argmax(-1) != al.argmax(-1)).sum()), "positions": int(ol[..., 0].numel())}


def compare_sequence(off: torch.Tensor, ours: torch.Tensor) -> dict:
    diff = (off - ours).abs().amax(-1)
    return {"max_abs_diff": float(diff.max()), "positions_over_1e-3": int((diff > 1e-3).sum()),
            "positions": int(diff.numel())}


def median_time(fn, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def random_codebook(tokenizer: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The tokenizer with a seeded N(0, 1) codebook (the init's tiny codes would all snap alike), in eval mode."""
    book = tokenizer.quantize.embedding.weight
    with torch.no_grad():
        book.copy_(torch.randn(book.shape, generator=torch.Generator().manual_seed(seed)))
    return tokenizer.eval()


# -- the two students -----------------------------------------------------------------------------
class VarPair:
    """Official ``DD_Model`` (d16) and argen ``DDVAR`` on the same weights and VQ-VAE."""

    name = "dd-var-d16"

    def __init__(self, root: Path, seed: int) -> None:
        torch.manual_seed(seed)
        vae = random_codebook(MultiScaleVQVAE(MultiScaleVQConfig.preset("vae_ch160v4096z32")), seed + 1)
        with official_path(root / "VAR"), keep_reset_parameters(), contextlib.redirect_stdout(sys.stderr):
            from models import build_vae_dd

            off_vae, off = build_vae_dd(device="cpu", depth=16, shared_aln=False, attn_l2_norm=True,
                                        n_d_embed_enable=True, layerwise_n_d_embed=True)
        off_vae.load_state_dict(vae.state_dict(), strict=True)
        state = random_state(off, seed + 2)
        off.load_state_dict(state, strict=True)
        self.official = off.eval()
        self.official_vae = off_vae.eval()
        self.argen = load_dd_var(state, "dd-var-d16", vae=vae)
        self.t2 = self.argen.config.two_step_t
        self.split = self.argen.config.loss_split_t
        self.shape = (self.argen.seq_len, self.argen.config.Cvae)

    def official_forward(self, labels, x, t):
        return self.official(labels, x, torch.zeros(len(labels)) + t)

    def official_run(self, labels, noise, t_list):
        """The loop of ``VAR/sample.py``."""
        m, x = self.official, noise
        for t in t_list:
            tt = torch.zeros([len(labels)]) + t
            x = m.perturb_data(x, tt, noise)
            tokens, logits = m.final_predict(labels, x, tt)
            x = m.get_final_sequence(tokens, logits, self.split)
        return x


class LlamaGenPair:
    """Official ``DDTransformer`` (GPT-B) and argen ``DDLlamaGen`` on the same weights and codebook."""

    name = "dd-llamagen-b"

    def __init__(self, root: Path, seed: int) -> None:
        torch.manual_seed(seed)
        vq = random_codebook(VQTokenizer(VQConfig.preset("VQ-16")), seed + 1)
        codebook = F.normalize(vq.quantize.embedding.weight.detach().float(), p=2, dim=-1)
        with official_path(root / "LlamaGen"), keep_reset_parameters():
            from autoregressive.models.dd import GPT_models

            off = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1,
                                      model_type="c2i", codebook_dim=8, codebook=codebook)
        state = random_state(off, seed + 2)
        off.load_state_dict(state, strict=True)
        self.official = off.eval()
        self.codebook = codebook
        self.argen = load_dd_llamagen(state, "dd-llamagen-b", tokenizer=vq)
        self.t2 = self.argen.config.two_step_t
        self.split = self.argen.config.split_t
        self.shape = (self.argen.seq_len, self.argen.config.codebook_dim)

    def official_forward(self, labels, x, t):
        return self.official(x, labels, torch.zeros(len(labels)) + t)

    def official_run(self, labels, noise, t_list):
        """The loop of ``eval_fewstep.py`` (nearest-codebook ids as ``idx``)."""
        m, x, book = self.official, noise, self.codebook
        for t in t_list:
            tt = torch.zeros([len(labels)]) + t
            x_t = m.perturb_data(x, tt, noise)
            idx = (book[:, None, None, :] - x_t).square().sum(dim=-1).argmin(dim=0)
            x = m.get_final_x_BLC(m.final_predict(x_BLC=x_t, cond_idx=labels, timestep=tt, idx=idx), self.split)
        return x


PAIRS = {VarPair.name: VarPair, LlamaGenPair.name: LlamaGenPair}


def argen_run(pair, labels, noise, t_list):
    tokens, _ = argen.samplers.sample(pair.argen, labels, sampler="dd", t_list=t_list, split=pair.split, noise=noise)
    return tokens


@torch.no_grad()
def bench(pair, batches: list[int], repeats: int, seed: int) -> dict:
    out: dict = {"t_list_2step": [0, pair.t2], "split": pair.split,
                 "params_m": round(sum(p.numel() for p in pair.argen.parameters()) / 1e6, 1),
                 "equality": {}, "timing": []}
    g = torch.Generator().manual_seed(seed + 3)
    for bs in batches:
        labels = torch.tensor([CLASSES[i % len(CLASSES)] for i in range(bs)])
        noise = torch.randn((bs, *pair.shape), generator=g)
        eq: dict = {}
        for t in (0, pair.t2):
            eq[f"forward_t{t}"] = compare_forward(pair.official_forward(labels, noise, t), pair.argen(noise, labels, t))
        runs = {"dd1": [0], "dd2": [0, pair.t2]}
        for key, t_list in runs.items():
            eq[key] = compare_sequence(pair.official_run(labels, noise, t_list), argen_run(pair, labels, noise, t_list))
        out["equality"][f"batch{bs}"] = eq
        print(json.dumps({pair.name: {f"equality_batch{bs}": eq}}), flush=True)
        row: dict = {"batch": bs}
        for key, t_list in runs.items():
            row[f"official_{key}_s"] = median_time(lambda: pair.official_run(labels, noise, t_list), repeats)
            row[f"argen_{key}_s"] = median_time(lambda: argen_run(pair, labels, noise, t_list), repeats)
            row[f"{key}_ratio"] = row[f"argen_{key}_s"] / row[f"official_{key}_s"]
        out["timing"].append(row)
        print(json.dumps({pair.name: row}), flush=True)
    return out


def _commit(root: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official-dir", required=True, type=Path,
                   help="work tree of microsoft/distilled_decoding (holds VAR/ and LlamaGen/)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", default="/tmp/official_dd.json")
    args = p.parse_args()
    root = args.official_dir.resolve()
    for sub in ("VAR/models/dd.py", "LlamaGen/autoregressive/models/dd.py"):
        if not (root / sub).is_file():
            p.error(f"{root} is not a distilled_decoding work tree: {sub} is missing")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.cuda.amp.autocast in the official code
    warnings.filterwarnings("ignore", category=UserWarning)  # torch.tensor(tensor) in get_final_sequence
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "official": {"repo": "microsoft/distilled_decoding", "dir": str(root), "commit": _commit(root)},
        "ratio": "argen time / official time (below 1: argen faster)",
        "models": {},
    }
    for name in args.models:
        pair = PAIRS[name](root, args.seed)
        result["models"][name] = bench(pair, args.batch, args.repeats, args.seed)
        del pair
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
