"""The board-shaped validation (docs/METHODS.md): folds that hold out a block of seen classes of
one domain to play the unseen ones, fit/score halves of the validation images, and the predicted
board score with its bootstrap interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_UNSEEN_SHARE = 0.28  # board B: 29 car classes, about 28% of the 4,305 test images


@dataclass(frozen=True)
class Fold:
    """One validation batch: ``held_out`` class ids play the unseen ones; ``unseen[i]`` marks the
    rows (validation list indices) of held-out classes."""

    held_out: np.ndarray
    rows: np.ndarray
    unseen: np.ndarray


def split_fit_score(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each class alternately to ``fit`` (1st, 3rd, ...) and ``score`` (2nd, 4th, ...);
    a class with one validation image gives it to ``fit``."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(idx.size)
    return np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)


def make_folds(
    labels: np.ndarray,
    domains: np.ndarray,
    seen: np.ndarray,
    num_unseen: int,
    exclude: np.ndarray,
    *,
    folds: int,
    share: float,
    batch: int,
    seed: int,
) -> list[Fold]:
    """Board-shaped batches over rows of class ids ``labels``. domains [C]: each class id's domain;
    num_unseen: the block size; exclude: class ids never held out (the expert's: it trains on all
    its classes); ``batch``: the most rows a batch has. Without unseen classes (or share 0): one
    fold holding nothing out."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng([seed, 17])
    # Each domain's classes that may be held out, domains in class order.
    pools = {d: np.setdiff1d(seen[domains[seen] == d], exclude) for d in domains[seen].tolist()}
    candidates = [d for d, pool in pools.items() if pool.size >= 2]
    if num_unseen == 0 or share <= 0 or not candidates:
        rows = np.arange(len(labels))
        if len(rows) > batch:
            rows = np.sort(rng.choice(rows, batch, replace=False))
        return [Fold(np.zeros(0, np.int64), rows, np.zeros(len(rows), bool))]
    out = []
    for f in range(folds):
        pool = pools[candidates[f % len(candidates)]]
        held = np.sort(rng.choice(pool, min(num_unseen, pool.size - 1), replace=False))
        u_rows = np.flatnonzero(np.isin(labels, held))
        s_rows = np.flatnonzero(~np.isin(labels, held))
        n_u, n_s = u_rows.size, int(round(u_rows.size * (1 - share) / share))
        if n_s > s_rows.size:  # not enough seen images for this share: fewer held-out ones
            n_s, n_u = s_rows.size, int(round(s_rows.size * share / (1 - share)))
        scale = min(1.0, batch / max(1, n_u + n_s))
        n_u, n_s = max(1, int(n_u * scale)), max(1, int(n_s * scale))
        pick_u = rng.choice(u_rows, min(n_u, u_rows.size), replace=False)
        pick_s = rng.choice(s_rows, min(n_s, s_rows.size), replace=False)
        rows = np.sort(np.concatenate([pick_u, pick_s]))
        out.append(Fold(held, rows, np.isin(labels[rows], held)))
    return out


def mean_score(values: list[np.ndarray], unseen: list[np.ndarray], share: float) -> float:
    """The folds' mean of per-image ``values``, held-out and seen images weighted by the share."""
    per_fold = [
        share * v[u].mean() + (1 - share) * v[~u].mean() if u.any() else v.mean()
        for v, u in zip(values, unseen)
    ]
    return float(np.mean(per_fold))


def bootstrap(
    values: list[np.ndarray],
    unseen: list[np.ndarray],
    share: float,
    *,
    seed: int,
    n_test: int | None = None,
    n_boot: int = 2000,
) -> np.ndarray:
    """Replicates of the folds' mean score: folds and the images of each (by part, held-out and
    seen) resampled with replacement; with ``n_test``, each replicate's score is then the share
    of ``n_test`` binomial draws (the board's own sampling)."""
    rng = np.random.default_rng([seed, 23])
    k = len(values)
    reps = np.zeros(n_boot)
    for b in range(n_boot):
        total = 0.0
        for f in rng.integers(0, k, k):
            v, u = values[f], unseen[f]
            parts = [(v[u], share), (v[~u], 1 - share)] if u.any() else [(v, 1.0)]
            for part, w in parts:
                total += w * part[rng.integers(0, part.size, part.size)].mean()
        reps[b] = total / k
    if n_test:
        reps = rng.binomial(n_test, np.clip(reps, 0, 1)) / n_test
    return reps


def predict(
    correct: list[np.ndarray],
    unseen: list[np.ndarray],
    share: float,
    n_test: int | None,
    seed: int,
) -> dict[str, float]:
    """The predicted board top-1 {"value", "low", "high"} (95% interval) of per-fold
    correctness arrays, for a board of ``n_test`` images (None: the score itself)."""
    value = mean_score(correct, unseen, share)
    reps = bootstrap(correct, unseen, share, seed=seed, n_test=n_test)
    low, high = np.percentile(reps, [2.5, 97.5])
    return {"value": value, "low": float(min(low, value)), "high": float(max(high, value))}


def paired_gain(
    a: list[np.ndarray], b: list[np.ndarray], unseen: list[np.ndarray], share: float, seed: int
) -> tuple[float, float]:
    """(mean gain of ``a`` over ``b``, its standard error) from per-image correctness on the
    same batches: the bootstrap of the paired differences."""
    diff = [x.astype(np.float64) - y for x, y in zip(a, b)]
    se = bootstrap(diff, unseen, share, seed=seed, n_boot=500).std()
    return mean_score(diff, unseen, share), float(se)
