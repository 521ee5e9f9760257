"""A quality score for models trained on the synthetic shapes set, that works offline.

Inception features mean little on 64px flat-colour shapes, so the bundled models are judged by a
small CNN trained on the shapes set itself (committed under ``assets/shapes-classifier``): the class
accuracy of generated images (does the model draw the class it was asked for?) and a Fréchet
distance between generated and held-out real images in the CNN's 128-d penultimate features (do the
images look like the data?).

    judge = load_judge()
    report = judge.score(images, labels)      # images (B, 3, H, W) in [-1, 1] or uint8 (B, H, W, 3)

Retrain (a few minutes of CPU) with ``python -m argen.eval.shapes --out assets/shapes-classifier``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from argen.data import SHAPE_NAMES, ShapesDataset
from argen.errors import CheckpointError, ConfigError
from argen.eval.frechet import frechet_distance, gaussian_stats

CONFIG_NAME, WEIGHTS_NAME, REFERENCE_NAME = "config.json", "model.safetensors", "reference_stats.npz"
# disjoint ranges of the held-out split: accuracy, reference statistics, the real-data floor of the FD
HELD_OUT_ACCURACY = (0, 1000)
REFERENCE_RANGE = (10_000, 5000)
FLOOR_RANGE = (20_000, 500)


def default_judge_dir() -> Path:
    from argen.zoo import ASSETS

    return ASSETS / "shapes-classifier"


def classifier(num_classes: int = len(SHAPE_NAMES)) -> nn.Module:
    """Four conv blocks, global average pool, linear: the penultimate 128-d output is the feature
    space of the Fréchet distance."""
    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


def batch(ds: ShapesDataset, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items ``start .. start + n`` of ``ds`` as (images, labels)."""
    items = [ds[i] for i in range(start, start + n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild, random damage of the kind a tokenizer does (blur from down/up-sampling, noise), so the
    judge recognises shapes rather than the exact clean rendering."""
    b, _, h, w = x.shape
    out = x.clone()
    for i in range(b):
        r = float(torch.rand(1, generator=g))
        if r < 0.5:
            size = int(torch.randint(h // 4, h, (1,), generator=g))
            small = F.interpolate(x[i : i + 1], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[i] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
        sigma = 0.1 * float(torch.rand(1, generator=g))
        out[i] = out[i] + sigma * torch.randn(out[i].shape, generator=g)
    return out.clamp(-1, 1)


def train_classifier(resolution: int = 64, steps: int = 800, seed: int = 0,
                     progress: bool = False) -> tuple[nn.Module, float]:
    """Train the judge on degraded training shapes (seed 1: other images than the generators saw);
    returns it in eval mode with its accuracy on 1000 clean held-out images."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    train = ShapesDataset(resolution, "train", seed=1)
    g = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="shapes classifier", disable=not progress):
        x, y = batch(train, step * 64, 64)
        loss = F.cross_entropy(net(degrade(x, g)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    x, y = batch(ShapesDataset(resolution, "test"), *HELD_OUT_ACCURACY)
    with torch.no_grad():
        acc = (net(x).argmax(-1) == y).float().mean().item()
    return net, acc


class ShapesJudge:
    """The trained classifier plus the Gaussian statistics of held-out real shapes in its features."""

    def __init__(self, net: nn.Module, resolution: int, mu: np.ndarray, sigma: np.ndarray,
                 info: dict | None = None) -> None:
        self.net, self.resolution, self.mu, self.sigma = net.eval(), resolution, mu, sigma
        self.info = dict(info or {})

    def protocol(self) -> dict:
        """What the numbers mean: which judge, its held-out accuracy, what the distance compares to."""
        from argen.eval.inception import file_sha256

        folder = self.info.get("folder")
        return {"metric": "argen.eval.shapes: class accuracy and Frechet distance in the judge's 128-d features",
                "judge": folder, "judge_sha256": file_sha256(Path(folder) / WEIGHTS_NAME) if folder else None,
                "judge_held_out_accuracy": self.info.get("held_out_accuracy"),
                "reference": f"{self.info.get('reference_images')} held-out shapes (test split)",
                "real_data_floor": self.info.get("real_data_floor"), "resolution": self.resolution}

    def _prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 NHWC (as in a sample .npz) or float NCHW in [-1, 1] (quantised to uint8 first, as a
        saved sample would be) -> float NCHW at the judge's resolution."""
        from argen.images import to_uint8

        x = torch.as_tensor(images)
        if x.dtype != torch.uint8:
            if x.ndim != 4 or x.shape[1] != 3:
                raise ConfigError(f"float images must be (B, 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
            x = to_uint8(x)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ConfigError(f"uint8 images must be (B, H, W, 3), got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor | np.ndarray,
                            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        body, head = self.net[:-1], self.net[-1]
        for i in range(0, len(images), batch_size):
            f = body(self._prepare(images[i : i + batch_size]))
            feats.append(f)
            logits.append(head(f))
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()

    def score(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | list[int]) -> dict:
        """Class accuracy (overall and per class) and the Fréchet distance to held-out real shapes."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        if len(images) < 2:
            raise ConfigError("the shapes score needs at least 2 images (a covariance)")
        if labels.min() < 0 or labels.max() >= len(SHAPE_NAMES):
            raise ConfigError(f"shapes labels must be in 0..{len(SHAPE_NAMES) - 1}, got {labels.min()}..{labels.max()}")
        feats, logits = self.features_and_logits(images)
        pred = logits.argmax(-1)
        per_class = {SHAPE_NAMES[c]: float((pred[labels == c] == c).mean())
                     for c in range(len(SHAPE_NAMES)) if (labels == c).any()}
        mu, sigma = gaussian_stats(feats)
        return {"accuracy": float((pred == labels).mean()), "per_class_accuracy": per_class,
                "frechet_distance": frechet_distance(mu, sigma, self.mu, self.sigma), "images": int(len(labels))}


def evaluate_model(model: str, *, per_class: int = 50, seed: int = 0, sampler: str | None = None, batch_size: int = 50,
                   judge: ShapesJudge | None = None, progress: bool = False, **options) -> dict:
    """Generate ``per_class`` images of every shape with ``model`` (a bundled name or a folder) and
    score them; the result records the sampling settings and the judge's own numbers. ``sampler``:
    default, the first that drives the model (:func:`argen.samplers.default_sampler`)."""
    import argen
    from argen.samplers import default_sampler

    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    judge = judge or load_judge()
    pipe = argen.load(model)
    n = getattr(pipe.generator, "num_classes", len(SHAPE_NAMES))
    if n != len(SHAPE_NAMES):
        raise ConfigError(f"{model} has {n} classes; the shapes score is for models of the {len(SHAPE_NAMES)} shapes")
    classes = [c for c in range(len(SHAPE_NAMES)) for _ in range(per_class)]
    sampler = sampler or default_sampler(pipe.generator)
    t0 = time.time()
    images = pipe.generate(classes, seed=seed, sampler=sampler, output_type="pt", batch_size=batch_size,
                           progress=progress, **options)
    result = {"model": model, **judge.score(images, classes), "seed": seed, "sampler": sampler,
              "sampling": {**pipe.defaults, **options}, "generation_s": round(time.time() - t0, 1)}
    return {**result, "protocol": judge.protocol()}


def reference_stats(net: nn.Module, resolution: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of the held-out images the Fréchet distance compares against."""
    x, _ = batch(ShapesDataset(resolution, "test"), *REFERENCE_RANGE)
    judge = ShapesJudge(net, resolution, np.zeros(1), np.zeros((1, 1)))
    return gaussian_stats(judge.features_and_logits(x)[0])


def save_judge(folder: str | Path, net: nn.Module, info: dict, mu: np.ndarray, sigma: np.ndarray) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(info, indent=2) + "\n")
    np.savez(folder / REFERENCE_NAME, mu=mu, sigma=sigma)
    return folder


def load_judge(folder: str | Path | None = None) -> ShapesJudge:
    """The committed judge (``assets/shapes-classifier``) or one saved by :func:`save_judge`."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else default_judge_dir()
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, REFERENCE_NAME) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"the shapes classifier folder {folder} lacks {', '.join(missing)}; retrain it with "
                              f"`python -m argen.eval.shapes --out {folder}`")
    info = json.loads((folder / CONFIG_NAME).read_text())
    net = classifier(info.get("num_classes", len(SHAPE_NAMES)))
    try:
        net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / WEIGHTS_NAME} does not fit the shapes classifier: {exc}") from None
    with np.load(folder / REFERENCE_NAME) as ref:
        mu, sigma = ref["mu"], ref["sigma"]
    return ShapesJudge(net, int(info.get("resolution", 64)), mu, sigma, info={**info, "folder": str(folder)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the shapes classifier and write it with its reference statistics.")
    p.add_argument("--out", default=str(default_judge_dir()))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.time()
    net, acc = train_classifier(args.resolution, args.steps, args.seed, progress=True)
    mu, sigma = reference_stats(net, args.resolution)
    judge = ShapesJudge(net, args.resolution, mu, sigma)
    x, y = batch(ShapesDataset(args.resolution, "test"), *FLOOR_RANGE)
    floor = judge.score(x, y)
    info = {"architecture": "4 x (conv3x3, BN, ReLU, maxpool2): 32-64-128-128, global average pool, linear",
            "num_classes": len(SHAPE_NAMES), "class_names": SHAPE_NAMES, "resolution": args.resolution,
            "steps": args.steps, "batch_size": 64, "seed": args.seed, "held_out_accuracy": acc,
            "held_out_images": HELD_OUT_ACCURACY[1], "reference_images": REFERENCE_RANGE[1],
            "real_data_floor": {"images": FLOOR_RANGE[1], "accuracy": floor["accuracy"],
                                "frechet_distance": floor["frechet_distance"]},
            "train_s": round(time.time() - t0, 1), "torch": torch.__version__}
    save_judge(args.out, net, info, mu, sigma)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
