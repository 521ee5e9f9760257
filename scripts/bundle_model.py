"""Copy a trained pipeline into assets/ and write its model card (data, steps, final losses,
training time, the exact commands, a sample grid, the class accuracy of generated images)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import argen
from argen.data import SHAPE_NAMES
from argen.images import make_grid


def describe(pipe) -> str:
    """The model card's first paragraph, for a token-wise or a scale-wise bundled model."""
    gen, tok = pipe.generator, pipe.tokenizer
    n_gen = sum(p.numel() for p in gen.parameters())
    n_tok = sum(p.numel() for p in tok.parameters())
    data = (f"argen's synthetic **shapes** set (10 classes: {', '.join(SHAPE_NAMES)}; random foreground and "
            "background colours from a 6-colour palette, random size, position and rotation; anti-aliased)")
    if gen.kind == "distilled":
        return distilled_description(pipe)
    if gen.kind == "scale":
        c = gen.config
        return (f"A VAR-style class-conditional next-scale transformer ({n_gen / 1e6:.2f}M parameters, "
                f"depth {c.depth}, width {c.embed_dim}{', shared AdaLN' if c.shared_aln else ''}) "
                "over the codes of a multi-scale VQ-VAE "
                f"({n_tok / 1e6:.2f}M parameters, downsample {tok.downsample}, {tok.codebook_size} codes, scales "
                f"{', '.join(map(str, tok.patch_nums))}: {gen.seq_len} tokens in {len(tok.patch_nums)} steps), both "
                f"trained from scratch on {data}.")
    if gen.kind in ("continuous", "flow-scale"):
        c = gen.config
        what = ("A MAR-style masked generator with a per-token diffusion head" if gen.kind == "continuous" else
                f"A FlowAR-style scale-wise flow-matching generator (scales {', '.join(map(str, c.scale))})")
        return (f"{what} ({n_gen / 1e6:.2f}M parameters, encoder/decoder {c.encoder_depth}+{c.decoder_depth} blocks of "
                f"width {c.encoder_embed_dim}, head {c.diffloss_d} x {c.diffloss_w}) over the latents of a KL VAE "
                f"({n_tok / 1e6:.2f}M parameters, downsample {tok.downsample}, {tok.latent_channels} channels, "
                "latent scale "
                f"{tok.scaling_factor:.4f}), both trained from scratch on {data}.")
    g = gen.token_grid
    if gen.registry_name == "igpt":
        c = gen.config
        return (f"An image-GPT-style class-conditional pixel GPT ({n_gen / 1e6:.2f}M parameters, {c.n_layer} layers, "
                f"width {c.n_embd}, {c.n_head} heads) over the {g[0] * g[1]} pixels of {pipe.image_size}x"
                f"{pipe.image_size} images in raster order, each pixel the id of its nearest colour in a "
                f"{tok.codebook_size}-colour palette fitted by k-means on {data}.")
    if gen.registry_name == "elm":
        c = gen.config
        return (f"An ELM-style class-conditional LM ({n_gen / 1e6:.2f}M parameters, {c.n_layer} layers, width {c.dim}) "
                f"over the bits of a binary autoencoder ({n_tok / 1e6:.2f}M parameters, downsample {tok.downsample}, "
                f"{tok.bits} Bernoulli bits per cell; {pipe.image_size}x{pipe.image_size} images -> {g[0]}x{g[1]} "
                f"positions), each position's bits read as {c.token_each} sub-tokens of {c.code_dim} bits predicted "
                f"by {c.token_each} heads from one hidden state, both trained from scratch on {data}.")
    encoder = (" with a patch-local encoder (each token sees only its own pixels, so a flat colour has one code)"
               if tok.config.encoder_type == "patch" else "")
    return (f"A LlamaGen-style class-conditional GPT ({n_gen / 1e6:.2f}M parameters, {gen.config.n_layer} layers, "
            f"width {gen.config.dim}) over the codes of a VQ tokenizer{encoder} ({n_tok / 1e6:.2f}M parameters, "
            "downsample "
            f"{tok.downsample}, {tok.codebook_size} codes; {pipe.image_size}x{pipe.image_size} images -> {g[0]}x{g[1]} "
            f"tokens), both trained from scratch on {data}.")


def distilled_description(pipe) -> str:
    """The first paragraph of a distilled student's card."""
    gen = pipe.generator
    n_gen = sum(p.numel() for p in gen.parameters())
    scale = gen.registry_name == "dd-var"
    teacher_passes = len(gen.config.patch_nums) if scale else gen.seq_len
    return (f"A Distilled Decoding student (DD1, arXiv 2412.17153) of the bundled {'VAR' if scale else 'LlamaGen'}-"
            f"style teacher ({n_gen / 1e6:.2f}M parameters: the teacher's network plus the noise/data embeddings and a "
            f"continuous output layer). It maps one Gaussian noise vector per token to all {gen.seq_len} tokens in "
            f"one pass, or in two (restarting at position {gen.default_t_list(2)[1]}), where its teacher takes "
            f"{teacher_passes} passes. Trained here on (noise, tokens) pairs from the teacher's exact noise -> token "
            "flow sampler (`argen train dd`); the tokenizer is the teacher's.")


def distilled_quality(dest: Path, teacher: str, judge: str | None) -> dict[str, dict]:
    """Judged class accuracy and shapes FD (`argen eval --domain shapes`, 50 per class, seed 0) of the
    student at 1 and 2 steps, of its teacher with its own defaults, and of the two together (the official
    combine procedure: the teacher samples up to the student's restart point, the student finishes)."""
    from argen.eval.shapes import evaluate_model, load_judge

    j = load_judge(judge)
    guide = argen.load(teacher)
    restart = argen.load(dest).generator.default_t_list(2)
    runs = {"teacher (ar)": dict(model=teacher), "student, 1 step": dict(model=str(dest), steps=1),
            "student, 2 steps": dict(model=str(dest), steps=2),
            f"teacher to position {restart[1]}, then the student": dict(
                model=str(dest), teacher=guide.generator, t_list=restart, **guide.defaults)}
    keep = ("accuracy", "per_class_accuracy", "frechet_distance", "images", "generation_s")
    return {k: {x: v for x, v in evaluate_model(**r, judge=j).items() if x in keep} for k, r in runs.items()}


def pairs_time(run: dict) -> str:
    """How long the pairs took: this run's share, or ``pairs_time_s`` set by ``--pairs-time-s`` when the run
    reused the shards of an earlier one (a rerun keeps finished shards)."""
    return f"{run['pairs_time_s'] / 60:.1f} min on one core"


def distilled_section(dest: Path, quality: dict[str, dict], run: dict) -> str:
    """The card's distillation table: pairs, and the quality rows."""
    rows = "\n".join(f"| {k} | {q['accuracy']:.1%} | {q['frechet_distance']:.2f} | "
                      f"{q['images'] / max(q['generation_s'], 1e-9):.1f} |" for k, q in quality.items())
    return f"""## Distillation

{run['pairs']} pairs from `{run['teacher']}` (its flow sampler with {json.dumps(run['pair_options'])}; \
{pairs_time(run)}), then {run['steps']} steps of batch {run['settings']['batch_size']} \
(restart point t = 0 for {run['t0_prob']:.0%} of the samples, else uniform; cross-entropy + {run['mse_weight']} x the \
normalised squared error of the continuous tokens; {run['train_time_s'] / 60:.1f} min). 2-step runs restart at \
position {run['two_step_t']}.

| sampler | judged class accuracy | shapes FD | images/s (batch 50, this CPU) |
|---|---|---|---|
{rows}

(`argen eval --domain shapes --model {dest.name} -o steps=2`; the teacher's row: \
`argen eval --domain shapes --model {run['teacher']}`; 500 images each, seed 0.)
"""


def code_stats(recon: dict) -> str:
    """The card's sentence on code multiplicity (discrete tokenizers only)."""
    if recon.get("code_perplexity_per_flat_colour") is None:
        return "."
    return ("; over the tokens of one flat colour the code perplexity is "
            f"{recon['code_perplexity_per_flat_colour']:.1f}\n"
            f"({recon['codes_per_flat_colour']:.0f} distinct code"
            f"{'' if round(recon['codes_per_flat_colour']) == 1 else 's'})"
            "; codes beyond one per colour are entropy the generator must model without image content.")


def stage(info: dict, label: str) -> dict:
    """One training run as the card's table shows it (a k-means palette: its iterations and pixels)."""
    if info.get("tokenizer_kind") == "palette":
        return {"stage": f"{label} (k-means palette, {info['codebook_size']} colours)", "steps": info["iters"],
                "batch_size": f"{info['pixels']} pixels of {info['images']} images", "seed": info["seed"],
                "final_losses": {"rec": info["reconstruction_mse"]}, "train_time_s": info["train_time_s"]}
    return {"stage": label, "steps": info["steps"], "batch_size": info["settings"]["batch_size"],
            "seed": info["settings"].get("seed", 0), "final_losses": info["final_losses"],
            "train_time_s": info["train_time_s"], "ema_decay": info.get("ema_decay"),
            "augment": info.get("augment")}


def augmentation(training: dict[str, list[dict]]) -> str:
    """The card's line on image augmentation (a run before the choice existed recorded none)."""
    used = sorted({f"{part}: {k}" for part, runs in training.items() for s in runs
                   for k, on in (s.get("augment") or {}).items() if on})
    return f"augmented ({', '.join(used)})" if used else "no flips or crops"


def stages(run: Path, part: str) -> list[dict]:
    """The training stages behind a run folder: its own train.json, after the stages of the model it
    started from (``--init-from``); a bundled folder keeps its stages in training.json."""
    if (run / "train.json").is_file():
        info = json.loads((run / "train.json").read_text())
        before = stages(Path(info["init_from"]), part) if info.get("init_from") else []
        return before + [stage(info, part if not before else f"{part}, continued (--init-from)")]
    for folder in (run, run.parent):  # a bundled pipeline folder, or its tokenizer sub-folder
        if (folder / "training.json").is_file():
            return json.loads((folder / "training.json").read_text())[part]
    raise SystemExit(f"{run}: no train.json or training.json to describe its training")


def data_line(training: dict[str, list[dict]], distilled: bool, resolution: int = 64) -> str:
    """The card's sentence on what the generator was trained on."""
    if distilled:
        return ("Data: the tokenizer is the teacher's (its rows above); the student's are (noise, tokens) pairs, "
                "pair i a function of (teacher, seed, i) only (see Distillation below).")
    return (f'Data: `ShapesDataset({resolution}, "train", seed=seed)`, items 0 .. steps x batch (deterministic by '
            f"index); {augmentation(training)}.")


def rows(parts: dict[str, list[dict]]) -> str:
    return "\n".join(
        f"| {s['stage']} | {s['steps']} | {s['batch_size']} | {s['seed']} | "
        f"{', '.join(f'{k} {v:.4f}' for k, v in s['final_losses'].items())} | {s['train_time_s'] / 60:.1f} min |"
        for part in parts.values() for s in part)


HAND_WRITTEN = "<!-- written by hand from here on: scripts/bundle_model.py keeps it when it rebuilds the card -->"


def hand_written(card: Path) -> str:
    """The part of an existing model card after the HAND_WRITTEN marker (marker included), or ''."""
    text = card.read_text() if card.exists() else ""
    return "\n" + HAND_WRITTEN + text.split(HAND_WRITTEN, 1)[1] if HAND_WRITTEN in text else ""


def main(tok_run: str, gen_run: str, dest: str, script: str = "scripts/build_bundled.sh",
         defaults: dict | None = None, judge: str | None = None, pairs_time_s: float | None = None) -> None:
    """``defaults``: sampling defaults to ship instead of the training run's (chosen by measuring
    with benchmarks/shapes_quality.py); ``judge``: a shapes classifier folder (default: the committed one)."""
    tok_run, gen_run, dest = Path(tok_run), Path(gen_run), Path(dest)
    training = {"tokenizer": stages(tok_run, "tokenizer"), "generator": stages(gen_run, "generator")}
    pipe = argen.load(gen_run)
    if defaults:
        pipe.defaults = {**pipe.defaults, **defaults}
    kept = hand_written(dest / "README.md")
    if dest.exists():
        shutil.rmtree(dest)
    pipe.name = dest.name
    pipe.save_pretrained(dest, generator_dtype=torch.float16)  # under 20 MB; loaded back as float32
    pipe = argen.load(dest)  # the card describes what ships
    distilled = pipe.generator.kind == "distilled"
    grid_classes = [c for c in range(10) for _ in range(4)]
    if distilled:  # the card's grid at 2 steps, a second one at 1 step
        make_grid(pipe.generate(grid_classes, seed=0, steps=1), ncols=8).save(dest / "samples_1step.png")
    grid = pipe.generate(grid_classes, seed=0, **({"steps": 2} if distilled else {}))
    make_grid(grid, ncols=8).save(dest / "samples.png")
    quality = json.loads(subprocess.run(
        [sys.executable, "benchmarks/shapes_quality.py", "--model", str(dest), "--per-class", "20",
         *(["--judge", judge] if judge else [])],
        check=True, capture_output=True, text=True).stdout)
    recon = json.loads(subprocess.run(
        [sys.executable, "benchmarks/shapes_quality.py", "--model", str(dest / "tokenizer"), "--reconstruct", "400",
         "--resolution", str(pipe.image_size), *(["--judge", judge] if judge else [])],
        check=True, capture_output=True, text=True).stdout)
    script_text = Path(script).read_text()
    default = dest.name == "shapes-llamagen"
    usage = ("argen generate                      # 10 classes, a grid PNG\n"
             "argen generate --classes star heart -n 8 --seed 1") if default else (
             f"argen generate --model {dest.name}{' --steps 2' if distilled else ''}        # 10 classes, a grid PNG\n"
             f"argen generate --model {dest.name} --classes star heart -n 8 --seed 1")
    if distilled:
        run = json.loads((gen_run / "train.json").read_text())
        run["pairs_time_s"] = pairs_time_s if pairs_time_s is not None else run["pairs_time_s"]
        dd_quality = distilled_quality(dest, run["teacher"], judge)
        dd_text = distilled_section(dest, dd_quality, run) + "\n"
        (dest / "distillation.json").write_text(json.dumps({"run": run, "quality": dd_quality}, indent=2))
    else:
        dd_text = ""
    card = f"""# {dest.name}: {"argen's bundled default model" if default else "a bundled argen model"}

{describe(pipe)} It exists so that argen works offline, at once, on a CPU.

```bash
{usage}
```

## Training (on the 2-core CPU of argen's development machine)

| | steps | batch | seed | final losses | time |
|---|---|---|---|---|---|
{rows(training)}

{data_line(training, distilled, pipe.image_size)} The generator
weights are the EMA (decay {training["generator"][-1]["ema_decay"]}), stored in float16 (argen loads them as \
float32). The exact commands (`{script}`):

```bash
{script_text.split("set -euo pipefail", 1)[1].split('cd "$(dirname "$0")/.."', 1)[1].strip()}
```

## Sampling defaults

{json.dumps(pipe.defaults)}

## Quality

A small CNN trained on shapes ({quality["classifier_held_out_accuracy"]:.1%} accuracy on held-out shapes)
classifies {quality["images"]} generated images (20 per class, seed {quality["seed"]}, the defaults above):
**{quality["generated_accuracy"]:.1%}** are recognised as the requested class
(`python benchmarks/shapes_quality.py --model {dest.name}`){
    "" if pipe.image_size == 64 else f"; the {pipe.image_size}px images are upsampled (bilinear, antialiased) to the "
    "judge's 64px, and so are the real shapes and reconstructions below"}.

| class | accuracy |
|---|---|
""" + "\n".join(f"| {k} | {v:.0%} |" for k, v in quality["per_class_accuracy"].items()) + f"""

The tokenizer's ceiling (400 held-out shapes encoded and decoded): reconstruction MSE
{recon["reconstruction_mse"]:.4f}; the same classifier recognises {recon["judge_accuracy_reconstructions"]:.1%} of the
reconstructions{code_stats(recon)}
(`python benchmarks/shapes_quality.py --model assets/{dest.name}/tokenizer --reconstruct 400{
    "" if pipe.image_size == 64 else f" --resolution {pipe.image_size}"}`).

{dd_text}![samples (4 per class, seed 0{', 2 steps; samples_1step.png: 1 step' if distilled else ''})](samples.png)
"""
    (dest / "README.md").write_text(card + kept)
    (dest / "training.json").write_text(json.dumps(training, indent=2))
    (dest / "quality.json").write_text(json.dumps({**quality, "tokenizer": recon}, indent=2))
    print(card)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("tokenizer_run")
    ap.add_argument("generator_run")
    ap.add_argument("dest")
    ap.add_argument("--script", default="scripts/build_bundled.sh", help="the build script quoted in the card")
    ap.add_argument("--defaults", type=json.loads, help="sampling defaults to ship, JSON")
    ap.add_argument("--judge",
                    help="shapes classifier folder for benchmarks/shapes_quality.py (default: the committed one)")
    ap.add_argument("--pairs-time-s", type=float,
                    help="a distilled student whose run reused the pairs of an earlier one: their making time")
    a = ap.parse_args()
    main(a.tokenizer_run, a.generator_run, a.dest, a.script, a.defaults, a.judge, a.pairs_time_s)
