"""Exactness harness for token-wise samplers: a tiny AR model whose joint distribution is enumerated.

``TableModel`` is a token-wise generator (the protocol the samplers drive: prefill / decode with a
cache, null condition for CFG) whose next-token logits are a seeded Gaussian table indexed by
(condition, whole prefix), so every conditional depends strongly on every earlier token (stale
Jacobi drafts are often wrong). ``exact_joint`` enumerates P(x_1..x_L | class) after the same
processing the samplers apply (CFG, temperature, top-k, top-p); ``check_samples`` runs Pearson's
chi-square on the joint, the per-position and the adjacent-pair marginals, and bounds the total
variation. Any later sampler of token-wise models is tested by handing it to ``run``.

With ``heads`` > 1 a position holds that many sub-tokens (ELM's split vocabulary, ``token_shape``
(heads,)), drawn independently from per-head logits; the joint is enumerated over the combined codes
(vocab ** heads per position) and judged on them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from argen import samplers
from argen.samplers.logits import SamplingOptions, guide_at, target_probs

P_FAIL = 1e-4  # a sampler fails when any chi-square p-value is below this
N_SAMPLES = 200_000


class TokenCache:
    """The cache protocol of :class:`argen.nn.KVCache` (lengths / truncate / select), holding tokens."""

    def __init__(self, rows: int, max_len: int) -> None:
        self.tokens = torch.zeros(rows, max_len, dtype=torch.long)
        self.lengths = torch.zeros(rows, dtype=torch.long)
        self.cond = torch.zeros(rows, dtype=torch.long)

    def truncate(self, lengths) -> None:
        new = torch.as_tensor(lengths, dtype=torch.long).expand_as(self.lengths)
        assert bool((new >= 0).all()) and bool((new <= self.lengths).all()), "truncate beyond the written length"
        self.lengths = new.clone()

    def select(self, rows: torch.Tensor) -> None:
        self.tokens, self.lengths, self.cond = self.tokens[rows], self.lengths[rows], self.cond[rows]


class TableModel(torch.nn.Module):
    """Token-wise toy generator over ``vocab`` codes and ``length`` positions, prefix of one token."""

    kind = "token"
    sampling_conventions: dict[str, str] = {}
    token_shape: tuple[int, ...] = ()
    prefix_len = 1

    def __init__(self, vocab: int = 5, length: int = 4, num_classes: int = 2, sharpness: float = 1.5,
                 grid: tuple[int, int] | None = None, seed: int = 0, heads: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.seq_len, self.num_classes = vocab, length, num_classes
        self.heads = heads
        self.token_shape = (heads,) if heads > 1 else ()
        self.radix = vocab**heads + 1
        self.token_grid = grid or (1, length)
        n_codes = self.radix ** (length - 1)
        shape = (num_classes + 1, n_codes, *self.token_shape, vocab)
        self.register_buffer("table", torch.randn(*shape, generator=g) * sharpness)
        self.register_buffer("weights", self.radix ** torch.arange(length - 1))
        # each code's vector in a 3-d "tokenizer" space (the flow sampler's noise lives there)
        self.register_buffer("code_vectors", torch.randn(vocab, 3, generator=g))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def null_condition(self, b: int) -> torch.Tensor:
        return torch.full((b,), self.num_classes, dtype=torch.long)

    def check_condition(self, classes) -> torch.Tensor:
        return torch.as_tensor(classes, dtype=torch.long)

    def new_cache(self, rows: int, max_len: int | None = None) -> TokenCache:
        return TokenCache(rows, max_len or self.prefix_len + self.seq_len)

    def prefix_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Table row of every prefix: tokens (R, T) -> codes (R, T), code[t] keys tokens[:t + 1]."""
        t = min(tokens.shape[1], self.seq_len - 1)
        w = torch.zeros(tokens.shape[1], dtype=torch.long)
        w[:t] = self.weights[:t]
        return ((tokens + 1) * w).cumsum(dim=1)

    def prefill(self, cond: torch.Tensor, cache: TokenCache) -> torch.Tensor:
        cache.cond = cond.clone()
        cache.lengths += self.prefix_len
        return self.table[cond, 0]

    def decode(self, tokens: torch.Tensor, cache: TokenCache) -> torch.Tensor:
        pos = cache.lengths[:, None] + torch.arange(tokens.shape[1])
        logits = self.decode_at(tokens, pos, cache)
        cache.lengths += tokens.shape[1]
        return logits

    def combined(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sub-tokens (..., heads) -> one code per position (the first head most significant)."""
        if not self.token_shape:
            return tokens
        return (tokens * self.vocab_size ** torch.arange(self.heads - 1, -1, -1)).sum(-1)

    def decode_at(self, tokens: torch.Tensor, pos: torch.Tensor, cache: TokenCache) -> torch.Tensor:
        assert int(pos.max()) < cache.tokens.shape[1], "window beyond the cache"
        cache.tokens[torch.arange(tokens.shape[0])[:, None], pos] = self.combined(tokens)
        image = cache.tokens[:, self.prefix_len :]  # a prefix code reads only the tokens up to its position
        codes = self.prefix_codes(image).gather(1, (pos - self.prefix_len).clamp(max=self.seq_len - 2))
        return self.table[cache.cond[:, None], codes % self.table.shape[1]]


def exact_joint(model: TableModel, cls: int, opts: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(every sequence (C^L, L) of combined codes, its probability (C^L,) float64) under the processed
    distribution; C = vocab ** heads, a position's probability the product of its heads'."""
    v, n, h = model.vocab_size, model.seq_len, model.heads
    seqs = torch.tensor(list(itertools.product(range(v**h), repeat=n)), dtype=torch.long)
    prob = torch.ones(seqs.shape[0], dtype=torch.float64)
    codes = torch.cat([torch.zeros(seqs.shape[0], 1, dtype=torch.long), model.prefix_codes(seqs)[:, :-1]], dim=1)
    for k in range(n):
        cond = model.table[cls, codes[:, k]]
        if opts.guided:
            logits = guide_at(torch.cat([cond, model.table[model.num_classes, codes[:, k]]])[:, None],
                              torch.full((seqs.shape[0], 1), k), opts, n)[:, 0]
        else:
            logits = cond
        probs = target_probs(logits, opts).double().view(seqs.shape[0], h, v)
        subs = torch.stack([(seqs[:, k] // v ** (h - 1 - g)) % v for g in range(h)], dim=1)
        prob *= probs.gather(2, subs[..., None]).squeeze(-1).prod(dim=1)
    return seqs, prob


def _chi2_pvalue(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson chi-square p-value; cells with expected count < 5 are merged into one."""
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().view(1)]) if small.any() else observed
    exp = torch.cat([expected[~small], expected[small].sum().view(1)]) if small.any() else expected
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = obs.numel() - 1
    if dof < 1:  # a single possible outcome: nothing to test
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@dataclass
class Verdict:
    p_joint: float
    p_positions: float  # the smallest per-position p-value
    p_pairs: float  # the smallest adjacent-pair p-value
    tv: float
    tv_bound: float
    impossible: int  # samples in cells of probability 0

    @property
    def passed(self) -> bool:
        return (min(self.p_joint, self.p_positions, self.p_pairs) >= P_FAIL and self.tv < self.tv_bound
                and self.impossible == 0)


def check_samples(codes: torch.Tensor, seqs: torch.Tensor, prob: torch.Tensor, vocab: int) -> Verdict:
    """Compare samples (N, L) with the exact joint."""
    n, length = codes.shape
    index = (codes * (vocab ** torch.arange(length - 1, -1, -1))).sum(1)
    counts = torch.bincount(index, minlength=prob.numel()).double()
    seq_index = (seqs * (vocab ** torch.arange(length - 1, -1, -1))).sum(1)
    expected = torch.zeros_like(counts)
    expected[seq_index] = prob * n
    p_joint = _chi2_pvalue(counts, expected)
    p_pos, p_pair = 1.0, 1.0
    for k in range(length):
        obs = torch.bincount(codes[:, k], minlength=vocab).double()
        exp = torch.zeros(vocab, dtype=torch.float64).index_add_(0, seqs[:, k], prob * n)
        p_pos = min(p_pos, _chi2_pvalue(obs, exp))
        if k + 1 < length:
            pair_obs = torch.bincount(codes[:, k] * vocab + codes[:, k + 1], minlength=vocab * vocab).double()
            pair_exp = torch.zeros(vocab * vocab, dtype=torch.float64).index_add_(
                0, seqs[:, k] * vocab + seqs[:, k + 1], prob * n)
            p_pair = min(p_pair, _chi2_pvalue(pair_obs, pair_exp))
    freq = counts / n
    tv = 0.5 * float((freq - expected / n).abs().sum())
    # E[TV] <= 1/2 sum sqrt(P(1-P)/N); allow three times that
    pe = expected / n
    bound = 3 * 0.5 * float(torch.sqrt(pe * (1 - pe) / n).sum())
    impossible = int(counts[expected == 0].sum())
    return Verdict(p_joint, p_pos, p_pair, tv, bound, impossible)


def run(model: TableModel, sampler: str, cls: int = 0, n: int = N_SAMPLES, seed: int = 0, batch: int | None = None,
        **options) -> Verdict:
    """Draw ``n`` samples of class ``cls`` (in calls of ``batch`` rows; default all at once) and judge them."""
    keys = ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p", "greedy", "cfg_schedule")
    opts = SamplingOptions(**{k: options[k] for k in keys if k in options})
    batch = batch or n
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        codes, _ = samplers.sample(model, [cls] * min(batch, n - i), sampler=sampler, generator=rng, **options)
        out.append(model.combined(codes))
    seqs, prob = exact_joint(model, cls, opts)
    return check_samples(torch.cat(out), seqs, prob, model.vocab_size**model.heads)


def tv_of(verdict: Verdict) -> str:
    return f"TV {verdict.tv:.4f} (bound {verdict.tv_bound:.4f}), p joint {verdict.p_joint:.2g}, " \
           f"positions {verdict.p_positions:.2g}, pairs {verdict.p_pairs:.2g}, impossible {verdict.impossible}"

