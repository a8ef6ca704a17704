"""InMaP (Qian, Xu & Hu, NeurIPS 2023): transductive vision proxies from unlabelled test features.

Official code: idstcv/InMaP, main.py (``inmap``); ``inmap_challenge`` is the challenge solution's
variant, which this project follows. Both algorithms and the numerics (log-domain Sinkhorn, the
lr halving decided on the device): docs/METHODS.md, 'InMaP'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewshot._tensor import (
    as_numpy,
    as_var,
    forward_only,
    jt,
    l2_normalize,
    log_softmax,
    logsumexp,
    row_softmax,
    softmax,
)


@dataclass(frozen=True)
class InMaPConfig:
    """InMaP hyperparameters. Official defaults: idstcv/InMaP main.py argparse defaults."""

    tau_t: float = 0.01  # temperature of the text logits -> pseudo-labels
    gamma: float = 0.0  # 0: uniform class marginal; > 0: marginal colsum(P)^gamma
    iters_sinkhorn: int = 20
    lr: float = 10.0
    iters_proxy: int = 2000
    tau_i: float = 0.04  # temperature of the proxy logits
    alpha: float = 0.6  # pseudo-labels with max > alpha become one-hot


OFFICIAL = InMaPConfig()
# The challenge solution's Inmap(): tau_i 1, 20 proxy steps, alpha 1 (never one-hot: a softmax
# never exceeds 1), Sinkhorn 100 iterations with gamma 0.
CHALLENGE = InMaPConfig(iters_sinkhorn=100, iters_proxy=20, tau_i=1.0, alpha=1.0)


def _sinkhorn(M, tau_t: float, gamma: float, iters: int):
    """:func:`sinkhorn` on a jt.Var, in the log domain: the official loop's numbers, but a class
    whose whole column underflows in float32 (officially 0/0: NaN everywhere) keeps its share."""
    j = jt()
    n, C = M.shape
    logP = log_softmax(M / tau_t, dim=1) - float(np.log(n))
    log_q = None
    if gamma > 0:
        log_q = gamma * logsumexp(logP, dim=0)
        log_q = log_q - logsumexp(log_q, dim=1)
    for _ in range(iters):
        logP = logP - logsumexp(logP, dim=0)
        logP = logP + log_q if log_q is not None else logP - float(np.log(C))
        logP = logP - logsumexp(logP, dim=1)
        logP = logP - float(np.log(n))
        # 20-100 cheap steps; syncing keeps each step's kernel the same (no growing graph).
        j.sync([logP])
    return (logP + float(np.log(n))).exp()


@forward_only
def sinkhorn(
    M,
    tau_t: float = OFFICIAL.tau_t,
    gamma: float = OFFICIAL.gamma,
    iters: int = OFFICIAL.iters_sinkhorn,
) -> np.ndarray:
    """Pseudo-labels [n, C] (rows sum to 1) from logits M [n, C] by InMaP's Sinkhorn scaling
    (docs/METHODS.md, 'InMaP', step 1)."""
    return as_numpy(_sinkhorn(as_var(M, "M", ndim=2), tau_t, gamma, iters))


def _hard_labels(Y, alpha: float):
    """Rows of Y whose maximum exceeds alpha become one-hot at their argmax (jt.Var in/out)."""
    j = jt()
    idx, val = j.argmax(Y, dim=1)
    cols = j.index(Y.shape, dim=1)
    onehot = (cols == idx.unsqueeze(1)).float32()
    return j.ternary((val > alpha).unsqueeze(1), onehot, Y)


def _proxy_descent(X, W, Y, lr, iters, tau_i, alpha, normalize: bool, halve_first: bool):
    """Gradient descent on the proxies W from their start; jt.Var in and out. halve_first: lr
    halved before the first step, as in the challenge solution (its previous-norm tracker starts at
    -100; the official one at +inf). The halvings stay on the device as a factor 2^-k:
    docs/METHODS.md, 'InMaP'."""
    j = jt()
    n = X.shape[0]
    Xt = X.transpose(1, 0)
    base = Xt @ _hard_labels(Y, alpha)  # [d, C]; fixed for the whole loop
    step0 = lr / (n * tau_i)
    factor = j.array(np.ones(1, np.float32))
    prev = j.array(np.full(1, -np.inf if halve_first else np.inf, np.float32))
    j.sync([Xt, base, W, factor, prev])
    for _ in range(iters):
        P = row_softmax((X @ W) / tau_i)
        G = Xt @ P - base
        norm = (G * G).sum().sqrt()
        factor = j.ternary(norm > prev, factor * 0.5, factor)
        prev = norm
        W = W - (step0 * factor) * G
        if normalize:
            W = l2_normalize(W, dim=0)
        j.sync([W, factor, prev])
    return W


def _check_xt(X, T):
    Xv = as_var(X, "X (image features [n, d])", ndim=2)
    Tv = as_var(T, "T (text classifier [d, C])", ndim=2)
    if Xv.shape[1] != Tv.shape[0]:
        raise ValueError(
            f"X has d={Xv.shape[1]} but T has {Tv.shape[0]} rows: T must be [d, C] (columns "
            "are classes)"
        )
    return Xv, Tv


@forward_only
def vision_proxies(
    X,
    T,
    Y,
    lr: float = OFFICIAL.lr,
    iters: int = OFFICIAL.iters_proxy,
    tau_i: float = OFFICIAL.tau_i,
    alpha: float = OFFICIAL.alpha,
) -> np.ndarray:
    """Official InMaP proxy learning (``image_opt``, steps 2-3 above): W [d, C] from X [n, d],
    T [d, C] and pseudo-labels Y [n, C]."""
    Xv, Tv = _check_xt(X, T)
    Yv = as_var(Y, "Y (pseudo-labels [n, C])", ndim=2)
    if tuple(Yv.shape) != (Xv.shape[0], Tv.shape[1]):
        raise ValueError(f"Y must be [n, C] = [{Xv.shape[0]}, {Tv.shape[1]}], got {Yv.shape}")
    W = _proxy_descent(Xv, Tv, Yv, lr, iters, tau_i, alpha, normalize=True, halve_first=False)
    return as_numpy(W)


@forward_only
def inmap(
    X,
    T,
    tau_t: float = OFFICIAL.tau_t,
    gamma: float = OFFICIAL.gamma,
    iters_sinkhorn: int = OFFICIAL.iters_sinkhorn,
    lr: float = OFFICIAL.lr,
    iters_proxy: int = OFFICIAL.iters_proxy,
    tau_i: float = OFFICIAL.tau_i,
    alpha: float = OFFICIAL.alpha,
) -> np.ndarray:
    """Official InMaP over all test features X [n, d] at once. Returns W [d, C]: predict with
    ``X @ W``."""
    Xv, Tv = _check_xt(X, T)
    Y = _sinkhorn(Xv @ Tv, tau_t, gamma, iters_sinkhorn)
    return as_numpy(_proxy_descent(Xv, Tv, Y, lr, iters_proxy, tau_i, alpha, True, False))


@forward_only
def inmap_challenge(
    X,
    T,
    tau_t: float = CHALLENGE.tau_t,
    gamma: float = CHALLENGE.gamma,
    iters_sinkhorn: int = CHALLENGE.iters_sinkhorn,
    lr: float = CHALLENGE.lr,
    iters_proxy: int = CHALLENGE.iters_proxy,
    tau_i: float = CHALLENGE.tau_i,
    alpha: float = CHALLENGE.alpha,
) -> np.ndarray:
    """The challenge solution's InMaP variant: the second pass's proxies W [d, C]."""
    Xv, Tv = _check_xt(X, T)
    Y0 = softmax((Xv @ softmax(Tv, dim=1)) / tau_t, dim=1)
    W1 = _proxy_descent(Xv, Tv, Y0, lr, iters_proxy, tau_i, alpha, False, True)
    Y1 = _sinkhorn(Xv @ W1, tau_t, gamma, iters_sinkhorn)
    return as_numpy(_proxy_descent(Xv, W1, Y1, lr, iters_proxy, tau_i, alpha, False, True))


VARIANTS = {"official": inmap, "challenge": inmap_challenge}


def run_inmap(X, T, variant: str = "official", **params) -> np.ndarray:
    """:func:`inmap` ('official') or :func:`inmap_challenge` ('challenge'), params overriding."""
    if variant not in VARIANTS:
        raise ValueError(f"InMaP variant must be one of {sorted(VARIANTS)}, not {variant!r}")
    return VARIANTS[variant](X, T, **params)
