"""The Gradio demo, launched from a checkout: ``python apps/gradio_app.py`` (same as ``argen demo``).

The app itself is :mod:`argen.demo`: it lives in the package so that the installed ``argen demo``
command can import it. This file only launches it, or re-exports it (``from apps.gradio_app import
build_demo`` from the repository root).
"""
from __future__ import annotations

import argparse

from argen.demo import build_demo, generate, launch

__all__ = ["build_demo", "generate", "launch", "main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--model", "-m", action="append", help="model to offer (repeatable; default: all usable here)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint-dir", help="folder holding official weight files")
    p.add_argument("--max-loaded", type=int, default=2, help="pipelines kept in memory at once")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait")
    args = p.parse_args(argv)
    launch(args.host, args.port, args.share, models=args.model, device=args.device, checkpoint_dir=args.checkpoint_dir,
           max_loaded=args.max_loaded, queue_size=args.queue_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
