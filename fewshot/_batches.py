"""Seeded, fixed-shape mini-batches over precomputed feature views.

The official trainers (Tip-Adapter-F, AMU) re-encode freshly augmented images every epoch. Over
cached features the equivalent is a stack of augmented views [V, N, d]: epoch e uses view e mod V.
Batches follow a seeded permutation (torch's DataLoader(shuffle=True), drop_last=False). The short
last batch is padded with real rows that get zero loss weight, so every step has the same shapes
(one Jittor compile) and padded rows stay finite through z-scoring.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from fewshot._tensor import as_var


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
    """Yield (indices [B] int32, weights [B] float32) for one shuffled epoch over n rows.

    B = min(batch_size, n) for every batch; weights are 1/len(real rows) on real rows, 0 on padding.
    """
    bs = min(batch_size, n)
    order = rng.permutation(n)
    for start in range(0, n, bs):
        real = order[start : start + bs]
        idx = np.empty(bs, np.int32)
        idx[: len(real)] = real
        idx[len(real) :] = order[: bs - len(real)]  # any real rows; their weight is 0
        w = np.zeros(bs, np.float32)
        w[: len(real)] = 1.0 / len(real)
        yield idx, w
