"""Seeded, fixed-shape mini-batches over precomputed feature views (epoch e uses view e mod V), and
the AdamW loop of Tip-Adapter-F and AMU over them (docs/METHODS.md, 'Tip-Adapter / Tip-Adapter-F').
The short last batch is padded with real rows of zero loss weight, so every step has one shape
(one Jittor compile) and padded rows stay finite through z-scoring.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np

from fewshot._optim import AdamW, cosine_lr
from fewshot._tensor import as_var, jt


def as_views(x, name: str):
    """[N, d] or [V, N, d] (numpy or jt.Var) -> float32 jt.Var [V, N, d]."""
    v = as_var(x, name)
    if v.ndim == 2:
        return v.unsqueeze(0)
    if v.ndim != 3:
        raise ValueError(f"{name} must be [N, d] or [views, N, d], got shape {tuple(v.shape)}")
    return v


def epoch_batches(
    n: int, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices [B] int32, weights [B] float32) for one shuffled epoch over n rows, with
    B = min(batch_size, n) for every batch; weights 1/len(real rows) on real rows, 0 on padding."""
    bs = min(batch_size, n)
    order = rng.permutation(n)
    for start in range(0, n, bs):
        real = order[start : start + bs]
        # Padded with any real rows; their weight is 0.
        idx = np.concatenate([real, order[: bs - len(real)]]).astype(np.int32)
        w = np.zeros(bs, np.float32)
        w[: len(real)] = 1.0 / len(real)
        yield idx, w


def train_adamw(
    param, batch_loss: Callable, n: int, cfg: Any, val_count: Optional[Callable] = None
) -> tuple[Any, int]:
    """Train one jt.Var as Tip-Adapter-F and AMU do: AdamW (torch's update; cfg.eps,
    cfg.weight_decay), torch's cosine lr per step from cfg.lr, cfg.epochs epochs of batches seeded
    by cfg.seed. batch_loss(param, epoch, idx Var, weights Var) -> loss. With val_count(param) ->
    int (run without autograd after every epoch) the first epoch with the highest count is kept
    (official: strictly better), else the last. Returns (param, kept epoch)."""
    j = jt()
    opt = AdamW([param], eps=cfg.eps, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    total = cfg.epochs * -(-n // min(cfg.batch_size, n))
    best, best_epoch, best_count = param, 0, -1
    step = 0
    for epoch in range(cfg.epochs):
        for idx, w in epoch_batches(n, cfg.batch_size, rng):
            loss = batch_loss(param, epoch, j.array(idx), j.array(w))
            (grad,) = j.grad(loss, [param])
            (param,) = opt.step([param], [grad], cosine_lr(cfg.lr, step, total))
            step += 1
            j.sync([param, *opt.state()])
        if val_count is not None:
            with j.no_grad():
                count = val_count(param)
            if count > best_count:
                best, best_epoch, best_count = param, epoch, count
    return (param, cfg.epochs - 1) if val_count is None else (best, best_epoch)
