"""Evaluation: FID / sFID / IS / precision / recall with the ADM evaluator's semantics, sample
batches (ADM ``.npz``, PNG folders), distributed sampling to them, and the offline shapes score of
the bundled models.

    from argen.eval import evaluate, format_report
    print(format_report(evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz")))
"""
from argen.eval.batches import (
    NpzImages,
    PngFolder,
    check_images,
    folder_to_npz,
    open_images,
    read_all,
    save_npz,
    save_pngs,
)
from argen.eval.evaluator import compute_activations, evaluate, format_report, load_reference
from argen.eval.frechet import frechet_distance, gaussian_stats
from argen.eval.inception import load_inception, resolve_weights, spatial_features, write_random_weights
from argen.eval.metrics import inception_score, manifold_radii, precision_recall, softmax

__all__ = [
    "NpzImages",
    "PngFolder",
    "check_images",
    "compute_activations",
    "evaluate",
    "folder_to_npz",
    "format_report",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "load_inception",
    "load_reference",
    "manifold_radii",
    "open_images",
    "precision_recall",
    "read_all",
    "resolve_weights",
    "save_npz",
    "save_pngs",
    "softmax",
    "spatial_features",
    "write_random_weights",
]
