"""TransCLIP (Zanella, Gérin & Ben Ayed, NeurIPS 2024): transduction over zero- or few-shot CLIP.

Official code: MaxZanella/transduction-for-vlms, TransCLIP_solver/TransCLIP.py and
TransCLIP_utils.py. The updates, the defaults, where the released code is not the method (and is
not followed) and the numerics: docs/METHODS.md, 'TransCLIP'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fewshot._tensor import as_labels, as_numpy, as_var, forward_only, jt, one_hot, row_softmax


@dataclass(frozen=True)
class TransCLIPConfig:
    """The official hyperparameters (names of TransCLIP.py, TransCLIP_utils.py; docs/METHODS.md)."""

    iters: int = 10  # max_iter: rounds of z passes, mu, Sigma (new mu); a last z pass after them
    inner_iters: int = 5  # update_z max_iter: z passes per outer iteration
    neighbors: int = 3  # n_neighbors (cosine kNN, self excluded)
    lambda_zero_shot: float = 1.0  # get_parameters, no shots
    lambda_few_shot: float = 0.5  # get_parameters, shots
    gammas: tuple[float, ...] = (0.002, 0.01, 0.02, 0.2)  # get_parameters gamma_list (shots)
    n_confident: int = 8  # init_mu n_most_confident (zero-shot means)
    logit_scale: float = 100.0  # prepare_objects: clip_logits = 100 * X @ T
    temperature: float = 50.0  # update_z: (50 / 2k) * graph, exp(intermediate / 50)
    shot_weight: float = 50.0  # update_mu / update_sigma: gamma * 50 / |S| per shot


OFFICIAL = TransCLIPConfig()

# Similarities per kNN block (64 MiB of float32): bounds memory whatever n is.
_KNN_BLOCK = 1 << 24
_VAR_FLOOR = 1e-12

# The graph term on the CPU: one OpenMP pass per row over W + W^T in CSR form, no atomics. The
# gather + scatter-add ops (CUDA; here when False) took 90 against 45 ms a pass at n 16000, C 1000.
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
    """(indices int32, values) of the m largest entries of S along dim, stacked along dim, by m
    rounds of argmax + mask: Jittor's sort-based topk took 970 against 30 ms (1024 x 16000)."""
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


def _knn(rows: np.ndarray, pool, k: int, exclude_self: bool, chunk: Optional[int]):
    """(idx int32, w) jt.Vars: the k most cosine-similar rows of pool [P, d] for each of `rows`
    [r, d], without pool[i] for rows[i] if exclude_self (rows is pool: explicitly, so a duplicate
    image cannot push out a neighbour). Blocks of `chunk` rows, the last padded: one shape."""
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk must be a positive number of rows or None, not {chunk!r}")
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
        if exclude_self:
            own[: stop - start] = np.arange(start, stop)
        S = j.array(block) @ pool_t
        pos = j.index(S.shape, dim=1)
        S = j.ternary(pos == j.array(own).unsqueeze(1), j.array(np.float32(-np.inf)), S)
        i, v = _top_rounds(S, k, dim=1)
        j.sync([i, v])
        idx.append(i[: stop - start])
        w.append(v[: stop - start])
    return j.concat(idx, dim=0), j.concat(w, dim=0)


def _start_means(X, P, shots, m: int = OFFICIAL.n_confident):
    """(mu0, per-class shot sums or None) [C, d]: a class with shots starts at its normalised shot
    sum (official few-shot init), any other at the normalised sum of its m rows with the largest
    P[:, c], weighted by P (official zero-shot init; unweighted where all are 0, officially 0/0)."""
    j = jt()
    n, C = P.shape
    ind, val = _top_rounds(P, min(m, n), dim=0)  # [m, C]
    feats = X.reindex([ind.shape[0], C, X.shape[1]], ["@e0(i0, i1)", "i2"], extras=[ind])
    wsum = val.sum(dim=0, keepdims=True)
    weights = j.ternary(wsum > 0, val, j.ones_like(val))
    mu = _unit_rows((feats * weights.unsqueeze(2)).sum(dim=0))
    if shots is None:
        return mu, None
    Sn, labels = shots
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


def _labelled(pair, name: str, d: int, C: int):
    """(features [m, d], labels) of the shots or the validation images, checked."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{name} must be a pair (features [m, d], labels [m])")
    F = as_numpy(pair[0])
    if F.ndim != 2 or F.shape[1] != d or F.shape[0] == 0:
        raise ValueError(f"{name} features must be [m >= 1, d={d}], got shape {F.shape}")
    return F, as_labels(pair[1], F.shape[0], C, f"{name} labels")


def _as_init(init, Xv, Tv, name: str = "init"):
    """Initial probabilities [n, C]: init with rows scaled to sum 1, or softmax(100 X T)."""
    n, C = Xv.shape[0], Tv.shape[1]
    if init is None:
        return row_softmax((Xv @ Tv) * OFFICIAL.logit_scale)
    P = as_numpy(init)
    if P.shape != (n, C):
        raise ValueError(f"{name} must be [n, C] = [{n}, {C}] probabilities, got shape {P.shape}")
    if not np.isfinite(P).all() or (P < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    s = P.sum(axis=1, keepdims=True, dtype=np.float64)
    if (s <= 0).any():
        raise ValueError(f"{name} has rows that sum to 0 (every row needs some probability)")
    return jt().array((P / s).astype(np.float32))


def _prepare(Xn: np.ndarray, Tv, yhat, shots, k: int, chunk) -> _Problem:
    j = jt()
    N, C = Xn.shape[0], Tv.shape[1]
    if not 1 <= k <= N - 1:
        raise ValueError(f"neighbors={k} needs 1 <= neighbors <= n - 1 = {N - 1}")
    X = j.array(Xn)
    idx, w = _knn(Xn, X, k, True, chunk)
    idx_m = [idx[:, m] for m in range(k)]
    w_m = [w[:, m].unsqueeze(1) for m in range(k)]
    csr = _symmetric_csr(as_numpy(idx, np.int64), as_numpy(w))
    mu0, shot_sum = _start_means(X, yhat, shots)
    shot_term = Sv = lab = None
    if shots is not None:
        Sn, labels = shots
        Sv = j.array(Sn)
        lab = j.array(labels.astype(np.int32))
        onehot = one_hot(labels, C)
        s_idx, s_w = _knn(Sn, X, k, False, chunk)
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


def _solve(p: _Problem, gamma: float, lam: float, iters: int):
    """The TransCLIP iterations; returns z (jt.Var [N, C])."""
    j = jt()
    X, yhat = p.X, p.yhat
    N, d = X.shape
    t = OFFICIAL.temperature
    anchor = lam * yhat.log() if lam != 0 else j.zeros_like(yhat)
    coupling = (t / (2 * p.k)) / t
    few = p.S is not None
    w_shot = gamma * OFFICIAL.shot_weight / p.S.shape[0] if few else 0.0
    mu, var, z = p.mu0, j.array(np.full(d, 1.0 / d, np.float32)), yhat
    j.sync([anchor, var])
    for it in range(iters + 1):
        inv = 1.0 / var
        loglik = X @ (mu * inv).transpose(1, 0) - 0.5 * (mu * mu * inv).sum(dim=1)
        base = anchor + loglik / t
        j.sync([base])
        for _ in range(OFFICIAL.inner_iters):
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


def _inputs(query, text, support, iters: int, lambda_: Optional[float]):
    """(query [n, d] numpy, text [d, C] Var, shots or None, lambda), checked."""
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
    shots = None if support is None else _labelled(support, "support", Xn.shape[1], Tv.shape[1])
    default = OFFICIAL.lambda_few_shot if shots is not None else OFFICIAL.lambda_zero_shot
    lam = default if lambda_ is None else lambda_
    if not lam >= 0:
        raise ValueError(f"lambda_ must be >= 0, not {lam!r}")
    return Xn, Tv, shots, float(lam)


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
    """TransCLIP assignments z [n, C] (float32, rows sum to 1; predict with ``z.argmax(1)``).

    query [n, d], text [d, C]: L2-normalised. support: shots (features [s, d], labels [s]; classes
    may lack shots) or None. init: initial probabilities [n, C], else softmax(100 query @ text).
    gamma: the shots' weight, required with support (:func:`choose_gamma`). lambda_: exponent of
    init (None: the config's). chunk: rows per kNN block (None: automatic, bounded memory).
    """
    Xn, Tv, shots, lam = _inputs(query, text, support, iters, lambda_)
    if shots is None and gamma not in (None, 0):
        raise ValueError("gamma weights the shots: without support it must be None or 0")
    if shots is not None and gamma is None:
        raise ValueError(
            "with support, gamma must be given: choose_gamma() picks it on labelled validation "
            f"images from {OFFICIAL.gammas}"
        )
    if gamma is not None and not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, not {gamma!r}")
    yhat = _as_init(init, jt().array(Xn), Tv)
    p = _prepare(Xn, Tv, yhat, shots, neighbors, chunk)
    return as_numpy(_solve(p, float(gamma or 0.0), lam, iters))


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
    """The gamma with the best validation top-1 (ties: the earlier), and each gamma's top-1.

    val = (features [v, d], labels [v]), neither shots nor queries, joins the queries as unlabelled
    nodes with its own initial predictions (val_init, required with init; else softmax(100 val @
    text)); each gamma runs from the same start. Then run :func:`transclip` with the chosen gamma.
    """
    Xn, Tv, shots, lam = _inputs(query, text, support, iters, lambda_)
    d, C = Xn.shape[1], Tv.shape[1]
    if shots is None:
        raise ValueError("choose_gamma needs support (features, labels): gamma weights the shots")
    Vn, v_lab = _labelled(val, "val", d, C)
    if not gammas or any(not g >= 0 for g in gammas):
        raise ValueError(f"gammas must be a non-empty sequence of values >= 0, not {gammas!r}")
    if (init is None) != (val_init is None):
        raise ValueError("give init and val_init together (or neither): both sets need them")
    j = jt()
    both = np.concatenate([Xn, Vn], axis=0)
    if init is None:
        yhat = _as_init(None, j.array(both), Tv)
    else:
        yq = _as_init(init, j.array(Xn), Tv)
        yv = _as_init(val_init, j.array(Vn), Tv, "val_init")
        yhat = j.concat([yq, yv], dim=0)
    p = _prepare(both, Tv, yhat, shots, neighbors, chunk)
    n = Xn.shape[0]
    acc: dict[float, float] = {}
    for g in gammas:
        z = as_numpy(_solve(p, float(g), lam, iters))
        acc[float(g)] = float((z[n:].argmax(axis=1) == v_lab).mean())
    return max(acc, key=acc.get), acc  # max keeps the first of equal accuracies
