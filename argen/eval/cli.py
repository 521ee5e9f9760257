"""``argen eval``: the ADM metrics of a sample batch, or the shapes score of a bundled model.

    argen eval samples.npz --ref VIRTUAL_imagenet256_labeled.npz       # IS, FID, sFID, precision, recall
    argen eval --domain shapes --model shapes-llamagen                 # class accuracy + shapes FD
    argen eval samples.npz --domain shapes                             # labels from the batch's arr_1

Prints the numbers (ADM's layout) and writes them with their protocol as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

DOMAINS = ("inception", "shapes")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("samples", nargs="?", help="sample batch: ADM .npz (arr_0 uint8 NHWC) or a folder of PNGs")
    p.add_argument("--ref", help="reference: ADM reference .npz (VIRTUAL_imagenet256_labeled.npz), a mu/sigma "
                                 ".npz, or a folder of PNGs")
    p.add_argument("--domain", choices=DOMAINS, default="inception",
                   help="inception: IS/FID/sFID/precision/recall (ADM); shapes: the bundled models' offline score")
    p.add_argument("--model", "-m",
                   help="shapes: generate with this bundled model or folder instead of reading SAMPLES")
    p.add_argument("--per-class", type=int, default=50, help="shapes --model: images per class")
    p.add_argument("--seed", type=int, default=0, help="shapes --model: sampling seed")
    p.add_argument("--sampler", help="shapes --model: sampler (default: the model's own, ar; dd for students)")
    p.add_argument("--option", "-o", action="append", default=[], help="shapes --model: sampling option key=value")
    p.add_argument("--out", help="JSON path (default: SAMPLES.eval.json beside the samples, else argen_eval.json)")
    p.add_argument("--inception-weights", help="FID Inception weights file (else $ARGEN_INCEPTION_WEIGHTS, the "
                                               "torch.hub cache, or a download when online)")
    p.add_argument("--offline", action="store_true", help="never download the Inception weights")
    p.add_argument("--batch-size", type=int, default=64, help="images per Inception forward (ADM: 64)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-cache", action="store_true", help="do not cache the reference images' activations")
    p.add_argument("--quiet", "-q", action="store_true")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``argen`` command's sub-parsers."""
    p = subparsers.add_parser("eval", help="IS / FID / sFID / precision / recall of a sample batch (ADM), or the "
                                           "shapes score of a bundled model (JSON)")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    return p


def _default_out(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    if args.samples:
        s = Path(args.samples)
        return s.with_name(s.stem + ".eval.json") if s.suffix else s.parent / (s.name + ".eval.json")
    return Path("argen_eval.json")


def _shapes(args: argparse.Namespace) -> dict:
    from argen.errors import ConfigError
    from argen.eval.batches import open_images, read_all
    from argen.eval.shapes import evaluate_model, load_judge
    from argen.options import parse_key_values

    if args.ref:
        raise ConfigError("--ref is for --domain inception; the shapes score compares with its own held-out shapes")
    if args.model and args.samples:
        raise ConfigError("give SAMPLES or --model, not both")
    if args.model:
        return evaluate_model(args.model, per_class=args.per_class, seed=args.seed, sampler=args.sampler,
                              progress=not args.quiet, **parse_key_values(args.option))
    if not args.samples:
        raise ConfigError("--domain shapes needs SAMPLES (an .npz with arr_1 labels) or --model NAME")
    source = open_images(args.samples)
    labels = source.labels()
    if labels is None:
        raise ConfigError(f"{args.samples} has no labels (arr_1): the shapes score needs the class of every image "
                          "(apps/sample.py writes them)")
    judge = load_judge()
    return {"samples": args.samples, **judge.score(read_all(source), labels), "protocol": judge.protocol()}


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation the arguments ask for, print it and write the JSON."""
    from argen.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.domain == "shapes":
        result = _shapes(args)
        text = "\n".join([f"Class accuracy: {result['accuracy']}", f"Shapes FD: {result['frechet_distance']}"])
    else:
        import torch

        from argen.eval.evaluator import evaluate, format_report

        if args.model:
            raise ConfigError("--model is for --domain shapes; sample ImageNet models with apps/sample.py first")
        if not args.samples:
            raise ConfigError("argen eval needs SAMPLES: an .npz sample batch or a folder of PNGs")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = evaluate(args.samples, args.ref, inception_weights=args.inception_weights,
                          allow_download=False if args.offline else None, device=device, batch_size=args.batch_size,
                          cache_dir=None if args.no_cache else _cache_dir(), progress=not args.quiet)
        text = format_report(result)
    out = _default_out(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"JSON: {out}")
    return 0


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("ARGEN_CACHE", Path.home() / ".cache" / "argen")) / "eval"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m argen.eval.cli`` / apps/evaluate.py: the same command outside ``argen``."""
    from argen.errors import ArgenError

    p = argparse.ArgumentParser(prog="argen-eval", description=__doc__.split("\n\n")[0])
    add_eval_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_eval(args)
    except (ArgenError, OSError) as exc:
        print(f"argen eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
