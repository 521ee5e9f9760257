"""Sample any argen model to an ADM sample batch (``samples.npz``: arr_0 uint8 NHWC, arr_1 labels),
on one process or many (torchrun / accelerate launch), resumable.

    python apps/sample.py --model shapes-llamagen --per-class 50 --outdir out/shapes
    torchrun --nproc_per_node 8 apps/sample.py --model var-d16 --per-class 50 --outdir out/var-d16 \\
        -o cfg_scale=1.5 -o top_p=0.96 -o top_k=900 --batch-size 50
    argen eval out/var-d16/samples.npz --ref VIRTUAL_imagenet256_labeled.npz

Shards of --batch-size consecutive images are seeded from (--seed, first index): the images do not
depend on the number of processes (see argen.eval.sampling). Rerun the same command to resume.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", "-m", default="shapes-llamagen", help="zoo name or pretrained folder")
    p.add_argument("--outdir", required=True, help="folder for samples.npz, meta.json, shards/ (and png/)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (VAR/MAR protocol: 50)")
    p.add_argument("--classes", type=int, nargs="+", help="class ids (default: every class of the model)")
    p.add_argument("--sampler", default="ar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="images per shard and forward batch")
    p.add_argument("--option", "-o", action="append", default=[], help="sampling option key=value (cfg_scale=1.5)")
    p.add_argument("--png", action="store_true", help="also write png/{index:06d}.png")
    p.add_argument("--checkpoint-dir", help="folder holding official weight files (no download)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="generator dtype (default float32)")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)

    import torch

    import argen
    from argen.errors import ArgenError, ConfigError
    from argen.eval.sampling import class_labels, sample_to_npz
    from argen.options import parse_key_values
    from argen.train import TrainSettings
    from argen.train.loop import make_accelerator

    try:
        acc = make_accelerator(TrainSettings(out=args.outdir, seed=args.seed, mixed_precision="no"))
        with acc.main_process_first():  # one download, the others read the cache
            pipe = argen.load(args.model, device=acc.device, checkpoint_dir=args.checkpoint_dir,
                              dtype=getattr(torch, args.dtype) if args.dtype else None)
        if not pipe.conditional and args.classes:
            raise ConfigError(f"{args.model} is unconditional: give --per-class N (images), no --classes")
        classes = args.classes if args.classes else range(max(pipe.generator.num_classes, 1))
        path = sample_to_npz(pipe, args.outdir, labels=class_labels(classes, args.per_class), seed=args.seed,
                             batch_size=args.batch_size, sampler=args.sampler, png=args.png, accelerator=acc,
                             progress=not args.quiet, **parse_key_values(args.option))
    except ArgenError as exc:
        print(f"sample: error: {exc}", file=sys.stderr)
        return 2
    if path is not None:
        print(json.dumps({"samples": str(path), "processes": acc.num_processes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
