"""TransCLIP (Zanella, Gérin & Ben Ayed, NeurIPS 2024): transduction over zero- or few-shot CLIP.

Official code: MaxZanella/transduction-for-vlms, TransCLIP_solver/TransCLIP.py (the solver loop)
and TransCLIP_solver/TransCLIP_utils.py (the updates). Restated here over feature arrays.

Every unlabelled image i gets class assignments z_i (a probability vector). The model: a Gaussian
mixture with one unit-norm mean mu_k per class and ONE diagonal covariance (a [d] vector of
variances, 1/d at start) shared by every class, a kNN graph W over the images (k = 3 nearest by
cosine, self excluded, W_ij = cos(x_i, x_j)), and the initial predictions y_hat (softmax(100 X T),
or another method's probabilities) as an anchor. With t = 50:

    z_i  ∝ y_hat_i^lambda * exp( (log N(x_i; mu, Sigma) + (t / 2k) sum_j (W_ij + W_ji) z_j) / t )
    mu_k ∝ (1/n) sum_i z_ik x_i + (gamma t / s) sum_{shots j of class k} x_j      (unit norm)
    Sigma = [(1/n) sum_ik z_ik (x_i - mu_k)^2 + (gamma t / s) sum_j (x_j - mu_{y_j})^2]
            / [(1/n) sum_ik z_ik + gamma t]                                (per dimension)

Shots (few-shot) are graph nodes with fixed one-hot z; each has k neighbours among the unlabelled
images, so a shot pulls the images it points to towards its class. z is updated ``inner_iters`` = 5
times per outer iteration (each update uses the previous z everywhere); ``iters`` = 10 outer
iterations, each a z pass then mu, then Sigma (with the new mu), plus a last z pass: z is updated
iters + 1 times, as in the official loop. Means start from the shots of each class (few-shot) or
from the 8 images with the highest initial probability for the class, weighted by that
probability (zero-shot).

Defaults (``TransCLIPConfig``): lambda 1 and gamma 0 without shots; lambda 0.5 with shots and
gamma chosen on labelled validation images from (0.002, 0.01, 0.02, 0.2) by :func:`choose_gamma`.

Where the released code differs from the method, this module follows the method:

* Few-shot graph order: the released affinity stacks its rows [shots; queries] while z is stacked
  [queries; shots], so the graph term of image i sums the wrong rows. Here every image sums over
  its own neighbours and over every node (image or shot) that has it as a neighbour.
* A shot's neighbours: the released code drops the first of k + 1 nearest for every row (the
  self-match of an image), which for a shot (not among the images) throws away its nearest image.
  Here a shot keeps its k nearest images. Self-exclusion for images is explicit (a duplicate image
  can not push out another neighbour).
* The class count is C = text.shape[1]; the released solver counts the distinct query LABELS (and
  one-hot encodes the shot labels without a class count).
* A class without shots (the challenge's unseen cars) gets its initial mean from its 8 most
  confident images, as in zero-shot; in the released code it is an empty sum (0/0 = NaN).
* gamma: :func:`choose_gamma` runs each gamma from the same start, with the validation images
  added as unlabelled nodes (so they have their own neighbours among validation and query
  images), scores each by top-1 on the validation labels and keeps the first best. The released
  solver runs the gammas one after another, each starting from the previous gamma's final state,
  predicts each validation image by the z of its nearest query image, and returns the z of the
  last gamma while reporting the accuracy at the best one.
* ``init``: the released zero-shot path with ``initial_predictions`` uses one tensor for y_hat and
  z, so each z update overwrites the anchor y_hat. Here y_hat stays the given init (its rows
  scaled to sum to 1).

Numerics (same values wherever the released formulas are finite): the log-likelihood is computed
as X (mu / var)^T - 0.5 (mu^2 / var) summed over d, without the term -0.5 sum_d x_d^2 / var_d that
is the same for every class of an image (the row normalisation of z cancels it); Sigma by the
same expansion from z^T X, so no [n, C, d] tensor exists; z is normalised in the log domain (a row
whose every entry would underflow stays finite); a class whose weighted sum is exactly zero keeps
its previous mean; variances are floored at 1e-12. The kNN search runs in row blocks of at most
2^24 similarities (``chunk``), so memory is O(n (k + C) + n d), never O(n^2). On the CPU the
graph term is one OpenMP kernel over W + W^T in CSR form; on CUDA, gather and scatter-add ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fewshot._tensor import as_labels, as_numpy, as_var, forward_only, jt, one_hot, row_softmax


@dataclass(frozen=True)
class TransCLIPConfig:
    """TransCLIP hyperparameters. Official values: TransCLIP_solver/TransCLIP.py (``max_iter``,
    ``n_neighbors``, ``std_init = 1 / d``) and TransCLIP_utils.py (``get_parameters``,
    ``update_z``, ``init_mu``, ``update_mu``; ``prepare_objects`` for the logit scale).

    ``transclip`` / ``choose_gamma`` take iters, neighbors, lambda_ and gammas per call (defaults
    from ``OFFICIAL``); the other fields are constants of the method, used as they are here."""

    iters: int = 10  # max_iter: mu/Sigma updates; z is updated iters + 1 times
    inner_iters: int = 5  # update_z max_iter
    neighbors: int = 3  # n_neighbors (cosine kNN, self excluded)
    lambda_zero_shot: float = 1.0  # get_parameters, no shots
    lambda_few_shot: float = 0.5  # get_parameters, shots
    gammas: tuple[float, ...] = (0.002, 0.01, 0.02, 0.2)  # get_parameters gamma_list (shots)
    n_confident: int = 8  # init_mu n_most_confident (zero-shot means)
    logit_scale: float = 100.0  # prepare_objects: clip_logits = 100 * X @ T
    temperature: float = 50.0  # update_z: (50 / 2k) * graph, exp(intermediate / 50)
    shot_weight: float = 50.0  # update_mu / update_sigma: gamma * 50 / |S| per shot
    # Covariance: one [d] vector of variances shared by all classes, 1/d at start (init_sigma).


OFFICIAL = TransCLIPConfig()

# Similarities per kNN block (64 MiB of float32): bounds memory whatever n is.
_KNN_BLOCK = 1 << 24
_VAR_FLOOR = 1e-12

# The graph term on the CPU: one pass per output row over its neighbour list (W + W^T in CSR
# form), rows spread over OpenMP threads, no atomics and no [n, C] temporaries. The generic
# gather + scatter-add ops (used on CUDA, and here when _CPU_GRAPH_KERNEL is False) took twice as
# long at n 16000, C 1000 (90 against 45 ms per pass; TransCLIP makes 55 passes).
_CPU_GRAPH_KERNEL = True
_GRAPH_CPU = r"""
#pragma omp parallel for
for (index_t i = 0; i < out_shape0; i++) {
    float* o = &@out(i, 0);
    for (index_t c = 0; c < out_shape1; c++) o[c] = 0.f;
    for (int e = @in1(i); e < @in1(i + 1); e++) {
        const float* zj = &@in0(@in2(e), 0);
        const float v = @in3(e);
        for (index_t c = 0; c < out_shape1; c++) o[c] += v * zj[c];
    }
}
"""


def _top_rounds(S, m: int, dim: int):
    """The m largest entries of S along dim, by m rounds of argmax that mask each winner.

    Returns (indices int32, values) stacked along dim ([rows, m] for dim 1, [m, cols] for dim 0).
    For k of 3-8 this is far cheaper than Jittor's sort-based topk (1024 x 16000 block: 30 ms
    against 970 ms on the CPU).
    """
    j = jt()
    pos = j.index(S.shape, dim=dim)
    neg_inf = j.array(np.float32(-np.inf))
    ind, val = [], []
    for r in range(m):
        i, v = j.argmax(S, dim=dim)
        ind.append(i)
        val.append(v)
        if r + 1 < m:
            S = j.ternary(pos == i.unsqueeze(dim), neg_inf, S)
    return j.stack(ind, dim=dim), j.stack(val, dim=dim)


def _knn(rows: np.ndarray, pool, k: int, self_offset: Optional[int], chunk: Optional[int]):
    """k most cosine-similar rows of pool (jt.Var [P, d]) for each row of `rows` (numpy [r, d]).

    self_offset: rows[i] is pool[self_offset + i] and is excluded; None: nothing is excluded.
    Blocks of `chunk` rows (default: as many as fit _KNN_BLOCK similarities); the last block is
    padded so every block has one shape (one compiled kernel). Returns (idx int32, w) jt.Vars.
    """
    j = jt()
    r, P = rows.shape[0], pool.shape[0]
    if chunk is None:
        chunk = max(1, min(r, _KNN_BLOCK // max(P, 1)))
    chunk = min(chunk, r)
    pool_t = pool.transpose(1, 0)
    j.sync([pool_t])
    idx, w = [], []
    for start in range(0, r, chunk):
        block = np.zeros((chunk, rows.shape[1]), np.float32)
        stop = min(start + chunk, r)
        block[: stop - start] = rows[start:stop]
        own = np.full(chunk, -1, np.int32)
        if self_offset is not None:
            own[: stop - start] = np.arange(start, stop) + self_offset
        S = j.array(block) @ pool_t
        pos = j.index(S.shape, dim=1)
        S = j.ternary(pos == j.array(own).unsqueeze(1), j.array(np.float32(-np.inf)), S)
        i, v = _top_rounds(S, k, dim=1)
        j.sync([i, v])
        idx.append(i[: stop - start])
        w.append(v[: stop - start])
    return j.concat(idx, dim=0), j.concat(w, dim=0)


@forward_only
def knn_graph(features, k: int = OFFICIAL.neighbors, pool=None, chunk: Optional[int] = None):
    """Sparse cosine kNN affinity as (indices int64 [r, k], weights float32 [r, k]), best first.

    pool None: neighbours of each row of `features` among the other rows (self excluded);
    otherwise among the rows of `pool` (nothing excluded: a shot's neighbours among the images).
    Weight = cosine similarity (features L2-normalised). Memory O(r k + chunk P).
    """
    F = as_numpy(features)
    if F.ndim != 2:
        raise ValueError(f"features must be [r, d], got shape {F.shape}")
    Pv = as_var(F if pool is None else pool, "pool", ndim=2)
    if Pv.shape[1] != F.shape[1]:
        raise ValueError(f"pool has d={Pv.shape[1]} but features have d={F.shape[1]}")
    avail = Pv.shape[0] - (1 if pool is None else 0)
    if not 1 <= k <= avail:
        raise ValueError(f"k={k} neighbours need 1 <= k <= {avail} candidate rows")
    _check_chunk(chunk)
    i, v = _knn(F, Pv, k, 0 if pool is None else None, chunk)
    return as_numpy(i, np.int64), as_numpy(v)


def _check_chunk(chunk: Optional[int]) -> None:
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk must be a positive number of rows or None, not {chunk!r}")


def _confident_means(X, P, m: int):
    """Per class: unit-normalised sum of the features of the m rows with the largest P[:, c],
    weighted by P (the official zero-shot init; the mean's 1/m vanishes in the normalisation).

    A class whose m largest probabilities are all exactly 0 gets the unweighted sum of those rows
    (the official code divides 0 by 0 there). jt.Vars in and out ([C, d]).
    """
    j = jt()
    n, C = P.shape
    m = min(m, n)
    ind, val = _top_rounds(P, m, dim=0)  # [m, C]
    feats = X.reindex([m, C, X.shape[1]], ["@e0(i0, i1)", "i2"], extras=[ind])
    wsum = val.sum(dim=0, keepdims=True)
    weights = j.ternary(wsum > 0, val, j.ones_like(val))
    means = (feats * weights.unsqueeze(2)).sum(dim=0)
    return _unit_rows(means)


def _start_means(X, P, shots, m: int):
    """(mu0 [C, d], per-class shot sums [C, d] or None): a class with shots starts at its
    normalised shot sum (official few-shot init), any other from its m most confident rows."""
    j = jt()
    mu = _confident_means(X, P, m)
    if shots is None:
        return mu, None
    Sn, labels = shots
    C = P.shape[1]
    sums = one_hot(labels, C).transpose(1, 0) @ j.array(Sn)
    has = j.array((np.bincount(labels, minlength=C) > 0).astype(np.float32)).unsqueeze(1)
    return has * _unit_rows(sums) + (1.0 - has) * mu, sums


def _unit_rows(M):
    norm = (M * M).sum(dim=1, keepdims=True).sqrt()
    return M / norm.maximum(1e-12)


@dataclass
class _Problem:
    """Everything that does not depend on gamma or lambda (jt.Vars)."""

    X: Any  # [N, d] unlabelled features
    X2: Any  # [N, d] squared entries
    yhat: Any  # [N, C] initial probabilities (rows sum to 1)
    idx: list  # k x [N] int32: neighbour m of every image
    w: list  # k x [N, 1]: its cosine
    csr: tuple  # (row pointers [N + 1], columns [2Nk], weights [2Nk]) of W + W^T
    shot_term: Any  # [N, C] sum over shots pointing at i of W_ji onehot_j, or None
    S: Any  # [s, d] shot features or None
    S_labels: Any  # [s] int32 or None
    shot_sum: Any  # [C, d] per-class sums of shot features, or None
    mu0: Any  # [C, d]
    k: int


def _as_support(support, d: int, C: int):
    if support is None:
        return None
    if not isinstance(support, (tuple, list)) or len(support) != 2:
        raise ValueError("support must be None or a pair (features [s, d], labels [s])")
    S = as_numpy(support[0])
    if S.ndim != 2 or S.shape[1] != d:
        raise ValueError(f"support features must be [s, d={d}], got shape {S.shape}")
    if S.shape[0] == 0:
        raise ValueError("support has no rows; pass support=None for the zero-shot path")
    return S, as_labels(support[1], S.shape[0], C, "support labels")


def _as_init(init, Xv, Tv, scale: float, name: str = "init"):
    """Initial probabilities [n, C]: the given ones with rows scaled to sum 1, or
    softmax(scale X T)."""
    n, C = Xv.shape[0], Tv.shape[1]
    if init is None:
        return row_softmax((Xv @ Tv) * scale)
    P = as_numpy(init)
    if P.shape != (n, C):
        raise ValueError(f"{name} must be [n, C] = [{n}, {C}] probabilities, got shape {P.shape}")
    if not np.isfinite(P).all() or (P < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    s = P.sum(axis=1, keepdims=True, dtype=np.float64)
    if (s <= 0).any():
        raise ValueError(f"{name} has rows that sum to 0 (every row needs some probability)")
    return jt().array((P / s).astype(np.float32))


def _prepare(Xn: np.ndarray, Tv, yhat, shots, k: int, cfg: TransCLIPConfig, chunk) -> _Problem:
    j = jt()
    N, C = Xn.shape[0], Tv.shape[1]
    if not 1 <= k <= N - 1:
        raise ValueError(f"neighbors={k} needs 1 <= neighbors <= n - 1 = {N - 1}")
    X = j.array(Xn)
    idx, w = _knn(Xn, X, k, 0, chunk)
    idx_m = [idx[:, m] for m in range(k)]
    w_m = [w[:, m].unsqueeze(1) for m in range(k)]
    csr = _symmetric_csr(as_numpy(idx, np.int64), as_numpy(w))
    mu0, shot_sum = _start_means(X, yhat, shots, cfg.n_confident)
    shot_term = Sv = lab = None
    if shots is not None:
        Sn, labels = shots
        Sv = j.array(Sn)
        lab = j.array(labels.astype(np.int32))
        onehot = one_hot(labels, C)
        s_idx, s_w = _knn(Sn, X, k, None, chunk)
        for m in range(k):
            part = (onehot * s_w[:, m].unsqueeze(1)).reindex_reduce(
                "add", [N, C], ["@e0(i0)", "i1"], extras=[s_idx[:, m]]
            )
            shot_term = part if shot_term is None else shot_term + part
    p = _Problem(X, X * X, yhat, idx_m, w_m, csr, shot_term, Sv, lab, shot_sum, mu0, k)
    j.sync([v for v in (p.X2, p.yhat, p.shot_term, p.shot_sum, p.mu0) if v is not None])
    j.sync(p.idx + p.w + list(p.csr))
    return p


def _symmetric_csr(idx: np.ndarray, w: np.ndarray):
    """W + W^T as CSR jt.Vars: image i lists its own neighbours and the images that chose it."""
    N, k = idx.shape
    own = np.repeat(np.arange(N), k)
    rows = np.concatenate([own, idx.ravel()])
    order = np.argsort(rows, kind="stable")
    cols = np.concatenate([idx.ravel(), own])[order]
    vals = np.concatenate([w.ravel(), w.ravel()])[order]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=N))])
    j = jt()
    return j.array(ptr.astype(np.int32)), j.array(cols.astype(np.int32)), j.array(vals)


def _graph(p: _Problem, z):
    """sum_j (W_ij + W_ji) z_j over images j, plus the constant shot part."""
    j = jt()
    N, C = z.shape
    if _CPU_GRAPH_KERNEL and not j.flags.use_cuda:
        out = j.code((N, C), "float32", [z, *p.csr], cpu_src=_GRAPH_CPU)
        return out if p.shot_term is None else out + p.shot_term
    out = p.shot_term
    for i_m, w_m in zip(p.idx, p.w):
        fwd = z.reindex([N, C], ["@e0(i0)", "i1"], extras=[i_m]) * w_m
        back = (z * w_m).reindex_reduce("add", [N, C], ["@e0(i0)", "i1"], extras=[i_m])
        out = fwd + back if out is None else out + fwd + back
    return out


def _solve(p: _Problem, gamma: float, lam: float, iters: int, cfg: TransCLIPConfig):
    """The TransCLIP iterations; returns z (jt.Var [N, C])."""
    j = jt()
    X, yhat = p.X, p.yhat
    N, d = X.shape
    t = cfg.temperature
    anchor = lam * yhat.log() if lam != 0 else j.zeros_like(yhat)
    coupling = (t / (2 * p.k)) / t
    few = p.S is not None
    w_shot = gamma * cfg.shot_weight / p.S.shape[0] if few else 0.0
    mu, var, z = p.mu0, j.array(np.full(d, 1.0 / d, np.float32)), yhat
    j.sync([anchor, var])
    for it in range(iters + 1):
        inv = 1.0 / var
        loglik = X @ (mu * inv).transpose(1, 0) - 0.5 * (mu * mu * inv).sum(dim=1)
        base = anchor + loglik / t
        j.sync([base])
        for _ in range(cfg.inner_iters):
            z = row_softmax(base + coupling * _graph(p, z))
            j.sync([z])
        if it == iters:
            break
        A = z.transpose(1, 0) @ X  # [C, d]
        num = A / N
        if few:
            num = num + w_shot * p.shot_sum
        new_mu = _unit_rows(num)
        alive = ((num * num).sum(dim=1, keepdims=True) > 0).float32()
        mu = alive * new_mu + (1.0 - alive) * mu
        # sum_ik z_ik (x_i - mu_k)^2 = r^T X^2 - 2 sum_k A_k mu_k + colsum(z)^T mu^2 (r: row sums)
        sq = (z.sum(dim=1).unsqueeze(1) * p.X2).sum(dim=0)
        sq = sq - 2.0 * (A * mu).sum(dim=0) + (z.sum(dim=0).unsqueeze(1) * mu * mu).sum(dim=0)
        num_var = sq / N
        den = z.sum() / N
        if few and gamma > 0:
            diff = p.S - mu.reindex([p.S.shape[0], d], ["@e0(i0)", "i1"], extras=[p.S_labels])
            num_var = num_var + w_shot * (diff * diff).sum(dim=0)
            den = den + w_shot * p.S.shape[0]
        var = (num_var / den).maximum(_VAR_FLOOR)
        j.sync([mu, var])
    return z


def _check_common(query, text, iters: int):
    Xn = as_numpy(query)
    if Xn.ndim != 2:
        raise ValueError(f"query must be [n, d] image features, got shape {Xn.shape}")
    Tv = as_var(text, "text (classifier [d, C])", ndim=2)
    if Tv.shape[0] != Xn.shape[1]:
        raise ValueError(
            f"query has d={Xn.shape[1]} but text has {Tv.shape[0]} rows: text must be [d, C] "
            "(columns are classes)"
        )
    if not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, not {iters!r}")
    return Xn, Tv


def _lambda(lambda_: Optional[float], few: bool, cfg: TransCLIPConfig) -> float:
    lam = (cfg.lambda_few_shot if few else cfg.lambda_zero_shot) if lambda_ is None else lambda_
    if not lam >= 0:
        raise ValueError(f"lambda_ must be >= 0, not {lam!r}")
    return float(lam)


@forward_only
def transclip(
    query,
    text,
    support=None,
    *,
    init=None,
    gamma: Optional[float] = None,
    lambda_: Optional[float] = None,
    iters: int = OFFICIAL.iters,
    neighbors: int = OFFICIAL.neighbors,
    chunk: Optional[int] = None,
) -> np.ndarray:
    """TransCLIP assignments z [n, C] (float32, rows sum to 1) for the query images.

    query [n, d] and text [d, C]: L2-normalised image features and text classifier.
    support: (features [s, d], labels [s]) shots, or None (zero-shot path). Classes may lack shots.
    init: initial class probabilities [n, C] (e.g. a cascade's), else softmax(100 query @ text).
    gamma: weight of the shots in the Gaussian (required with support: see :func:`choose_gamma`;
    0 / None without). lambda_: exponent of init (None: 1 without shots, 0.5 with).
    chunk: rows per kNN block (None: automatic, bounded memory). Predict with ``z.argmax(1)``.
    """
    config = OFFICIAL
    Xn, Tv = _check_common(query, text, iters)
    shots = _as_support(support, Xn.shape[1], Tv.shape[1])
    if shots is None and gamma not in (None, 0):
        raise ValueError("gamma weights the shots: without support it must be None or 0")
    if shots is not None and gamma is None:
        raise ValueError(
            "with support, gamma must be given: choose_gamma() picks it on labelled validation "
            f"images from {config.gammas}"
        )
    if gamma is not None and not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, not {gamma!r}")
    _check_chunk(chunk)
    lam = _lambda(lambda_, shots is not None, config)
    yhat = _as_init(init, jt().array(Xn), Tv, config.logit_scale)
    p = _prepare(Xn, Tv, yhat, shots, neighbors, config, chunk)
    return as_numpy(_solve(p, float(gamma or 0.0), lam, iters, config))


@forward_only
def choose_gamma(
    query,
    text,
    support,
    val,
    *,
    init=None,
    val_init=None,
    gammas: tuple[float, ...] = OFFICIAL.gammas,
    lambda_: Optional[float] = None,
    iters: int = OFFICIAL.iters,
    neighbors: int = OFFICIAL.neighbors,
    chunk: Optional[int] = None,
) -> tuple[float, dict[float, float]]:
    """The shot weight gamma with the best validation top-1, and the accuracy of every gamma.

    val = (features [v, d], labels [v]): labelled images that are neither shots nor queries. They
    join the query images as unlabelled nodes (their own kNN among validation + query images, their
    own initial predictions: val_init, or softmax(100 val @ text); with ``init`` given,
    ``val_init`` is required), TransCLIP runs once per gamma from the same start, and each run is
    scored by top-1 of the validation rows against their labels. Ties keep the earlier gamma.
    Then run :func:`transclip` on the query images with the chosen gamma.
    """
    config = OFFICIAL
    Xn, Tv = _check_common(query, text, iters)
    d, C = Xn.shape[1], Tv.shape[1]
    shots = _as_support(support, d, C)
    if shots is None:
        raise ValueError("choose_gamma needs support (features, labels): gamma weights the shots")
    if not isinstance(val, (tuple, list)) or len(val) != 2:
        raise ValueError("val must be a pair (features [v, d], labels [v])")
    Vn = as_numpy(val[0])
    if Vn.ndim != 2 or Vn.shape[1] != d or Vn.shape[0] == 0:
        raise ValueError(f"val features must be [v >= 1, d={d}], got shape {Vn.shape}")
    v_lab = as_labels(val[1], Vn.shape[0], C, "val labels")
    if not gammas or any(not g >= 0 for g in gammas):
        raise ValueError(f"gammas must be a non-empty sequence of values >= 0, not {gammas!r}")
    if (init is None) != (val_init is None):
        raise ValueError("give init and val_init together (or neither): both sets need them")
    _check_chunk(chunk)
    lam = _lambda(lambda_, True, config)
    j = jt()
    both = np.concatenate([Xn, Vn], axis=0)
    if init is None:
        yhat = _as_init(None, j.array(both), Tv, config.logit_scale)
    else:
        yq = _as_init(init, j.array(Xn), Tv, config.logit_scale)
        yv = _as_init(val_init, j.array(Vn), Tv, config.logit_scale, "val_init")
        yhat = j.concat([yq, yv], dim=0)
    p = _prepare(both, Tv, yhat, shots, neighbors, config, chunk)
    n = Xn.shape[0]
    acc: dict[float, float] = {}
    for g in gammas:
        z = as_numpy(_solve(p, float(g), lam, iters, config))
        acc[float(g)] = float((z[n:].argmax(axis=1) == v_lab).mean())
    best = max(acc, key=lambda g: (acc[g], -list(acc).index(g)))
    return best, acc


@forward_only
def initial_means(
    query, probs, support=None, n_confident: int = OFFICIAL.n_confident
) -> np.ndarray:
    """The starting class means mu [C, d] (unit rows): per class the normalised sum of its shots,
    or, for a class without shots (every class without support), the normalised sum of the
    n_confident query images with the largest probs[:, c], weighted by that probability."""
    Xv = as_var(query, "query", ndim=2)
    Pv = as_var(probs, "probs", ndim=2)
    if Pv.shape[0] != Xv.shape[0]:
        raise ValueError(f"probs has {Pv.shape[0]} rows but query has {Xv.shape[0]}")
    shots = _as_support(support, Xv.shape[1], Pv.shape[1])
    return as_numpy(_start_means(Xv, Pv, shots, n_confident)[0])
