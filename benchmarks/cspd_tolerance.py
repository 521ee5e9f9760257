"""How close a CSpD draft must be: exact acceptance when the draft is the target itself with its per-token
conditions z perturbed by a relative amount. JSON out:

    python benchmarks/cspd_tolerance.py [--model shapes-mar] [--rel 0.001 0.003 0.01 0.03 0.1]

Half of each image's tokens known (from the model's own samples), the other half predicted: the target's
head chain on z and the "draft's" on z + noise share their initial and per-step noise (CSpD's trajectory
alignment); a draft token is drawn from the draft chain's last Gaussian and kept with probability
min(1, p/q) (argen.samplers.gaussian_spec). Also reports the last step's std.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

import argen
from argen.samplers.gaussian_spec import Gaussian, accept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes-mar")
    ap.add_argument("--rel", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(args.seed)
    pipe = argen.load(args.model)
    m = pipe.generator
    b, n = args.images, m.seq_len
    labels = [i % m.num_classes for i in range(b)]
    tokens = pipe.generate(labels, seed=args.seed, output_type="codes", num_iter=16)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, torch.stack([torch.randperm(n, generator=g) for _ in range(b)])[:, : n // 2], True)
    z = m.conditions(tokens, mask, m.class_embedding(torch.tensor(labels)))[mask]
    steps = m.sampling_steps
    x_start = torch.randn(z.shape[0], m.token_dim, generator=g)
    noise = torch.randn(steps, z.shape[0], m.token_dim, generator=g)

    def last_gaussian(cond: torch.Tensor) -> Gaussian:
        x = x_start
        for i in range(steps - 1, 0, -1):
            mean, log_var = m.step_gaussian(x, i, cond, None, steps)
            x = mean + torch.exp(0.5 * log_var) * noise[i]
        mean, log_var = m.step_gaussian(x, 0, cond, None, steps)
        return Gaussian(mean, 0.5 * log_var)

    p = last_gaussian(z)
    rows = []
    for rel in args.rel:
        scale = rel * z.norm(dim=-1, keepdim=True) / math.sqrt(z.shape[-1])
        q = last_gaussian(z + scale * torch.randn(z.shape, generator=g))
        x = q.draw(torch.randn(q.mean.shape, generator=g))
        rows.append({"relative_z_noise": rel, "mean_abs_mean_gap": float((p.mean - q.mean).abs().mean()),
                     "token_acceptance": float(accept(x, p, q, g).float().mean())})
    print(json.dumps({"model": args.model, "tokens": int(z.shape[0]), "diffusion_steps": steps,
                      "last_step_std": float(torch.exp(p.log_std).mean()), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
