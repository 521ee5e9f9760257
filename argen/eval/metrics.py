"""Inception Score and precision / recall (Kynkäänniemi et al. 2019) with the ADM evaluator's semantics.

IS: chunks of ``split_size`` (5000: 10 splits for 50k samples), exp(mean KL(p(y|x) || p(y))) per
chunk, averaged over chunks. Precision / recall: each point's radius is the squared distance to its
k-th nearest neighbour (k = 3, self excluded) within its own set; precision is the share of samples
inside some reference point's ball, recall the share of references inside some sample's ball.
Pairwise squared distances go in blocks of 10k x 10k computed in float16 arithmetic, recomputed in
float32 for a block that over- or underflows, as ADM's ``DistanceBlock`` does: P/R depend on it at
the third decimal. The float16 arithmetic is emulated by rounding float32 results, so CPU and GPU
agree and no half-precision kernel is needed.
"""
from __future__ import annotations

import numpy as np
import torch

from argen.errors import ConfigError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """IS of class probabilities (N, C) over consecutive chunks of ``split_size`` (ADM: 5000); 0 log 0 = 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ConfigError(f"inception_score needs probabilities of shape (N, classes), got {p.shape}")
    if split_size < 1:
        raise ConfigError(f"split_size must be >= 1, got {split_size}")
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        marginal = part.mean(0, keepdims=True)
        safe = np.where(part > 0, part, 1.0)  # p log p -> 0 where p = 0
        kl = np.sum(part * (np.log(safe) - np.log(np.where(part > 0, marginal, 1.0))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _half(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest float16 value (inf beyond its range), kept as float32."""
    return x.half().float()


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, half: bool = True) -> torch.Tensor:
    """Squared Euclidean distances (len(u), len(v)) as ADM computes them: ||u||^2 - 2 u.v + ||v||^2,
    clamped at 0, in float16 arithmetic (falling back to float32 when that is not finite)."""
    u, v = u.float(), v.float()
    if half:
        uh, vh = _half(u), _half(v)
        nu = _half(_half(uh * uh).sum(1, keepdim=True))
        nv = _half(_half(vh * vh).sum(1))[None]
        d = _half(_half(nu - _half(2 * _half(uh @ vh.T))) + nv).clamp_min(0)
        if torch.isfinite(d).all():
            return d
    nu, nv = (u * u).sum(1, keepdim=True), (v * v).sum(1)[None]
    return (nu - 2 * (u @ v.T) + nv).clamp_min(0)


def manifold_radii(features: torch.Tensor, k: int = 3, block: int = 10000, half: bool = True) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in the same set (the point itself
    is at distance 0 and counted first, so index k of the sorted row, as ADM's partition)."""
    n = len(features)
    if n <= k:
        raise ConfigError(f"precision/recall with k={k} needs at least {k + 1} images per set, got {n}")
    radii = torch.empty(n, device=features.device)
    for r in range(0, n, block):
        rows = features[r : r + block]
        best = None  # the k + 1 smallest distances of each row so far
        for c in range(0, n, block):
            d = pairwise_sq_distances(rows, features[c : c + block], half)
            d = d if best is None else torch.cat([best, d], 1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii[r : r + block] = best[:, k]
    return radii


def precision_recall(reference: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor, k: int = 3,
                     block: int = 10000, half: bool = True, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(precision, recall) of sample features against reference features (ADM: pool_3 of the 10k
    reference images against all samples)."""
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float32), device=device)
    sam = torch.as_tensor(np.asarray(samples, dtype=np.float32), device=device)
    if ref.ndim != 2 or sam.ndim != 2 or ref.shape[1] != sam.shape[1]:
        raise ConfigError("precision/recall needs (N, D) features of one width, got "
                          f"{tuple(ref.shape)} and {tuple(sam.shape)}")
    ref_radii, sam_radii = manifold_radii(ref, k, block, half), manifold_radii(sam, k, block, half)
    sample_inside = torch.zeros(len(sam), dtype=torch.bool, device=device)  # within some reference ball
    ref_inside = torch.zeros(len(ref), dtype=torch.bool, device=device)  # within some sample ball
    for r in range(0, len(ref), block):
        for c in range(0, len(sam), block):
            d = pairwise_sq_distances(ref[r : r + block], sam[c : c + block], half)
            sample_inside[c : c + block] |= (d <= ref_radii[r : r + block, None]).any(0)
            ref_inside[r : r + block] |= (d <= sam_radii[None, c : c + block]).any(1)
    return sample_inside.float().mean().item(), ref_inside.float().mean().item()
