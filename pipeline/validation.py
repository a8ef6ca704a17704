"""The board-shaped validation: labelled validation batches that look like the test set, and the
board score they predict.

The test set of board B mixes images of seen classes with about 28% images of unseen classes (a
whole domain, cars, with no training image), and the transductive stages see it whole. Plain
validation has no unseen image at all. Here each of ``folds`` folds holds out a BLOCK of seen
classes of one domain (as many as there are real unseen classes, keeping at least one class of
the domain seen): their shots are withheld from the heads trained for the fold, so they play the
unseen classes, and their validation images are mixed with images of the other seen classes in
the share expected on the test set. The real unseen classes (no validation image) are left out
of the class columns while scoring. Folds take their blocks from different domains in turn
(never the expert's: the expert is trained on all its classes).

Validation images are split per class into two halves: ``fit`` rows select epochs and
hyperparameters of the heads, ``score`` rows make the batches, so the predicted score is not
the score the heads were selected on.

The predicted board score of a cascade is, per fold, ``share * top-1 on held-out images +
(1 - share) * top-1 on seen images``, averaged over folds. Its interval is a bootstrap over
folds and over the images of each fold's batch, with the test set's own sampling added (each
replicate draws a board of ``n_test`` images from a binomial), so it says where the number the
board will show is expected to fall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_UNSEEN_SHARE = 0.28  # board B: 29 car classes, about 28% of the 4,305 test images
N_BOOT = 2000


@dataclass(frozen=True)
class Fold:
    """One validation batch. ``rows`` index the validation list; ``unseen[i]`` is True where the
    class of ``rows[i]`` is held out; ``held_out`` are the class ids playing the unseen ones."""

    held_out: np.ndarray
    rows: np.ndarray
    unseen: np.ndarray

    @property
    def seen_rows(self) -> np.ndarray:
        return self.rows[~self.unseen]


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
    """Board-shaped batches over validation rows with class ids ``labels`` (score rows only).

    domains [C]: the domain of every class id; seen: the class ids with shots; num_unseen: how
    many real unseen classes there are (the block size); exclude: class ids never held out (the
    expert's). Without real unseen classes (or share 0) there is one fold holding nothing out.
    ``batch`` caps a batch at the test set's size.
    """
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng([seed, 17])
    candidates = [
        d
        for d in dict.fromkeys(domains[seen].tolist())
        if np.setdiff1d(seen[domains[seen] == d], exclude).size >= 2
    ]
    if num_unseen == 0 or share <= 0 or not candidates:
        rows = np.arange(len(labels))
        if len(rows) > batch:
            rows = np.sort(rng.choice(rows, batch, replace=False))
        return [Fold(np.zeros(0, np.int64), rows, np.zeros(len(rows), bool))]
    out = []
    for f in range(folds):
        domain = candidates[f % len(candidates)]
        pool = np.setdiff1d(seen[domains[seen] == domain], exclude)
        k = min(num_unseen, pool.size - 1)
        held = np.sort(rng.choice(pool, k, replace=False))
        u_rows = np.flatnonzero(np.isin(labels, held))
        s_rows = np.flatnonzero(~np.isin(labels, held))
        n_u, n_s = u_rows.size, int(round(u_rows.size * (1 - share) / share))
        if n_s > s_rows.size:  # not enough seen images for this share: fewer held-out ones
            n_s, n_u = s_rows.size, int(round(s_rows.size * share / (1 - share)))
        scale = min(1.0, batch / max(1, n_u + n_s))
        n_u, n_s = max(1, int(n_u * scale)), max(1, int(n_s * scale))
        pick_u = rng.choice(u_rows, min(n_u, u_rows.size), replace=False)
        pick_s = rng.choice(s_rows, min(n_s, s_rows.size), replace=False)
        rows = np.concatenate([pick_u, pick_s])
        order = np.argsort(rows)
        unseen = np.concatenate([np.ones(pick_u.size, bool), np.zeros(pick_s.size, bool)])
        out.append(Fold(held, rows[order], unseen[order]))
    return out


def fold_score(values: np.ndarray, unseen: np.ndarray, share: float) -> float:
    """The board-shaped mean of per-image ``values`` of one fold (share-weighted)."""
    if not unseen.any():
        return float(values.mean())
    return float(share * values[unseen].mean() + (1 - share) * values[~unseen].mean())


def bootstrap(
    values: list[np.ndarray],
    unseen: list[np.ndarray],
    share: float,
    *,
    seed: int,
    n_test: int | None = None,
    n_boot: int = N_BOOT,
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
    value = float(np.mean([fold_score(c, u, share) for c, u in zip(correct, unseen)]))
    reps = bootstrap(correct, unseen, share, seed=seed, n_test=n_test)
    low, high = np.percentile(reps, [2.5, 97.5])
    return {"value": value, "low": float(min(low, value)), "high": float(max(high, value))}


def paired_gain(
    a: list[np.ndarray], b: list[np.ndarray], unseen: list[np.ndarray], share: float, seed: int
) -> tuple[float, float]:
    """(mean gain of ``a`` over ``b``, its standard error) from per-image correctness on the
    same batches: the bootstrap of the paired differences."""
    diff = [x.astype(np.float64) - y for x, y in zip(a, b)]
    gain = float(np.mean([fold_score(d, u, share) for d, u in zip(diff, unseen)]))
    return gain, float(bootstrap(diff, unseen, share, seed=seed, n_boot=500).std())
