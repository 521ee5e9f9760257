"""The ADM evaluation suite in one call: samples + reference -> IS, FID, sFID, precision, recall,
with the protocol that produced them.

As in ADM's ``evaluator.py``: FID and sFID use the reference file's precomputed ``mu``/``sigma`` and
``mu_s``/``sigma_s`` (statistics of the whole data set) when it has them, else statistics of its
images; precision / recall use the reference *images* (the 10k in ``VIRTUAL_imagenet256_labeled.npz``)
against all samples; IS needs no reference. A reference with only ``mu``/``sigma`` (MAR's
``fid_stats``) gives FID and IS; the result says why the others are missing.

    result = evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz")
    print(format_report(result))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from argen.errors import ConfigError
from argen.eval.batches import ImageSource, PngFolder, open_images
from argen.eval.frechet import frechet_distance, gaussian_stats
from argen.eval.inception import InceptionExtractor, file_sha256, load_inception, spatial_features
from argen.eval.metrics import inception_score, precision_recall, softmax

METRICS = ("inception_score", "fid", "sfid", "precision", "recall")
LABELS = {"inception_score": "Inception Score", "fid": "FID", "sfid": "sFID", "precision": "Precision",
          "recall": "Recall"}


@dataclass
class Activations:
    pool: np.ndarray  # (N, 2048) pool_3
    spatial: np.ndarray  # (N, 2023) mixed_6, first 7 channels, NHWC
    logits: np.ndarray  # (N, 1008)


def compute_activations(source: str | os.PathLike | np.ndarray | ImageSource, extractor: InceptionExtractor,
                        batch_size: int = 64, progress: bool = False, desc: str = "inception") -> Activations:
    """Features of every image of ``source``, ``batch_size`` at a time (ADM: 64)."""
    from tqdm import tqdm

    source = open_images(source)
    pool, spatial, logits = [], [], []
    with tqdm(total=len(source), desc=desc, unit="img", disable=not progress) as bar:
        for images in source.batches(batch_size):
            out = extractor(images)
            pool.append(out["pool_3"].numpy())
            spatial.append(spatial_features(out["mixed_6"]).numpy())
            logits.append(out["logits"].numpy())
            bar.update(len(images))
    return Activations(np.concatenate(pool), np.concatenate(spatial), np.concatenate(logits))


@dataclass
class Reference:
    """What a reference file offers: precomputed statistics and/or images."""

    path: Path
    stats: tuple[np.ndarray, np.ndarray] | None = None
    spatial_stats: tuple[np.ndarray, np.ndarray] | None = None
    images: ImageSource | None = None

    @cached_property
    def sha256(self) -> str | None:
        return file_sha256(self.path) if self.path.is_file() else None

    def describe(self) -> dict:
        out = {"path": str(self.path), "file": self.path.name}
        if self.sha256:
            out["sha256"] = self.sha256
        out["fid_statistics"] = "mu/sigma from the file" if self.stats else "computed from its images"
        out["images"] = len(self.images) if self.images is not None else 0
        return out


def load_reference(path: str | os.PathLike) -> Reference:
    """An ADM reference batch (``arr_0`` + ``mu``, ``sigma``, ``mu_s``, ``sigma_s``), a statistics file
    (``mu``, ``sigma``[, ``mu_s``, ``sigma_s``]), a plain sample batch or a PNG folder."""
    path = Path(path)
    if path.is_dir():
        return Reference(path, images=PngFolder(path))
    if not path.is_file():
        raise ConfigError(f"reference {path} does not exist (expected an ADM reference .npz, a mu/sigma .npz or a "
                          "PNG folder)")
    try:
        with np.load(path) as data:
            keys = set(data.files)
            stats = (data["mu"], data["sigma"]) if {"mu", "sigma"} <= keys else None
            spatial = (data["mu_s"], data["sigma_s"]) if {"mu_s", "sigma_s"} <= keys else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read reference {path}: {exc}") from None
    images = open_images(path) if "arr_0" in keys else None
    if stats is None and images is None:
        raise ConfigError(f"reference {path} has neither images (arr_0) nor statistics (mu, sigma); it holds: "
                          f"{', '.join(sorted(keys)) or 'nothing'}")
    return Reference(path, stats, spatial, images)


def _reference_activations(ref: Reference, extractor: InceptionExtractor, batch_size: int, progress: bool,
                           cache_dir: str | os.PathLike | None) -> Activations:
    """The reference images' activations, cached per (reference file, weights) when ``cache_dir`` is given."""
    cache = None
    if cache_dir is not None and ref.sha256:
        cache = Path(cache_dir) / f"{ref.sha256[:16]}-{extractor.weights_sha256[:16]}.npz"
        if cache.is_file():
            with np.load(cache) as data:
                return Activations(data["pool"], data["spatial"], data["logits"])
    acts = compute_activations(ref.images, extractor, batch_size, progress, desc="reference")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".part.npz")
        np.savez(tmp, pool=acts.pool, spatial=acts.spatial, logits=acts.logits)
        tmp.rename(cache)
    return acts


def evaluate(
    samples: str | os.PathLike | np.ndarray | ImageSource,
    reference: str | os.PathLike | Reference | None = None,
    *,
    extractor: InceptionExtractor | None = None,
    inception_weights: str | os.PathLike | None = None,
    allow_download: bool | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    k: int = 3,
    split_size: int = 5000,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """All five metrics that the inputs allow (the others are None, with the reason in ``missing``)
    and the ``protocol``: network, weights hash, resize, sample count, reference file."""
    from argen.version import __version__

    source = open_images(samples)
    ref = load_reference(reference) if reference is not None and not isinstance(reference, Reference) else reference
    if ref is not None and ref.images is not None and len(ref.images) <= k:
        raise ConfigError(f"precision/recall with k={k} needs at least {k + 1} reference images, got {len(ref.images)}")
    if ref is not None and ref.images is not None and len(source) <= k:
        raise ConfigError(f"precision/recall with k={k} needs at least {k + 1} samples, got {len(source)}")
    extractor = extractor or load_inception(inception_weights, allow_download=allow_download, device=device)
    acts = compute_activations(source, extractor, batch_size, progress, desc="samples")
    result: dict = {m: None for m in METRICS}
    missing: dict[str, str] = {}
    result["inception_score"] = inception_score(softmax(acts.logits), split_size)
    if ref is None:
        missing.update({m: "no reference given" for m in METRICS[1:]})
    else:
        ref_acts = None
        if ref.images is not None:
            ref_acts = _reference_activations(ref, extractor, batch_size, progress, cache_dir)
        ref_stats = ref.stats or gaussian_stats(ref_acts.pool)
        result["fid"] = frechet_distance(*gaussian_stats(acts.pool), *ref_stats)
        ref_spatial = ref.spatial_stats or (gaussian_stats(ref_acts.spatial) if ref_acts is not None else None)
        if ref_spatial is not None:
            result["sfid"] = frechet_distance(*gaussian_stats(acts.spatial), *ref_spatial)
        else:
            missing["sfid"] = "the reference has no spatial statistics (mu_s, sigma_s) and no images"
        if ref_acts is not None:
            result["precision"], result["recall"] = precision_recall(ref_acts.pool, acts.pool, k=k,
                                                                     device=extractor.device)
        else:
            missing["precision"] = missing["recall"] = "the reference has no images (arr_0)"
    result["missing"] = missing
    result["protocol"] = {
        "evaluator": f"argen {__version__} argen.eval (ADM evaluator semantics)",
        **extractor.protocol(),
        "samples": source.describe(),
        "reference": ref.describe() if ref is not None else None,
        "inception_score": {"split_size": split_size, "splits": -(-len(source) // split_size)},
        "precision_recall": {"k": k, "features": "pool_3", "distances": "float16 blocks of 10000, float32 fallback"},
        "statistics": "float64; Frechet distance via eigenvalues of sigma1 @ sigma2",
    }
    return result


def format_report(result: dict) -> str:
    """ADM's printout (``Inception Score: ...`` one metric a line), n/a for what the inputs do not allow."""
    lines = []
    for m in METRICS:
        value = result.get(m)
        lines.append(f"{LABELS[m]}: {value}" if value is not None
                     else f"{LABELS[m]}: n/a ({result['missing'].get(m, '')})")
    return "\n".join(lines)
