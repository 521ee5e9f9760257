"""Evaluate a sample batch like the ADM suite (the same command as ``argen eval``).

    python apps/evaluate.py out/var-d16/samples.npz --ref VIRTUAL_imagenet256_labeled.npz --out var-d16.json
    python apps/evaluate.py --domain shapes --model shapes-llamagen
"""
import sys

from argen.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
