"""Array plumbing shared by the few-shot methods (numpy/jt.Var in, float32 Jittor inside, numpy
out) and the numerically stable primitives they all need, written once."""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

# jt(): the Jittor module, imported once by models.runtime (CUDA when present, quiet logs)
from models.runtime import jittor as jt


def forward_only(fn: Callable) -> Callable:
    """Run fn under jt.no_grad(): Jittor records every op on float Vars for a backward pass, and a
    2000-step loop would keep every step's [n, C] intermediates (~16 MB per InMaP step)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with jt().no_grad():
            return fn(*args, **kwargs)

    return wrapper


def is_var(x: Any) -> bool:
    """True for a jt.Var (without importing Jittor when x is plainly something else)."""
    return type(x).__name__ == "Var" and type(x).__module__.startswith("jittor")


def as_var(x: Any, name: str = "array", ndim: int | None = None):
    """numpy array, jt.Var or nested list -> float32 jt.Var (the official codes compute in float32;
    InMaP's main.py upcasts CLIP's fp16 features too); checks the rank when asked."""
    j = jt()
    if is_var(x):
        v = x if str(x.dtype) == "float32" else x.astype("float32")
    else:
        v = j.array(np.ascontiguousarray(np.asarray(x), dtype=np.float32))
    if ndim is not None and v.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(v.shape)}")
    return v


def as_numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """jt.Var or array-like -> numpy array of `dtype` owning its memory (Var.numpy() may alias)."""
    a = x.numpy() if is_var(x) else np.asarray(x)
    return np.array(a, dtype=dtype, copy=True)


def as_labels(y: Any, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """Integer labels -> int64 numpy vector of length n with every value in [0, num_classes)."""
    lab = as_numpy(y, dtype=np.int64).reshape(-1)
    if lab.shape[0] != n:
        raise ValueError(f"{name} has {lab.shape[0]} entries but there are {n} feature rows")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}); got range [{lab.min()}, {lab.max()}]"
        )
    return lab


def one_hot(labels: np.ndarray, num_classes: int):
    """int labels (numpy) -> float32 one-hot jt.Var [n, num_classes]."""
    return jt().array(np.eye(num_classes, dtype=np.float32)[labels])


def softmax(x, dim: int = -1):
    """Softmax with the max subtracted first (no overflow for logits / 0.01)."""
    z = x - x.max(dim=dim, keepdims=True)
    e = z.exp()
    return e / e.sum(dim=dim, keepdims=True)


# One pass per row, rows spread over OpenMP threads. Jittor's fused CPU kernel for the generic
# softmax below recomputes and reduces in separate single-threaded loops: on 4305 x 403 logits it
# takes 9-30 ms against 1-2 ms here (torch: 3 ms), and InMaP runs it 2000 times.
_ROW_SOFTMAX_CPU = r"""
#pragma omp parallel for
for (index_t i = 0; i < in0_shape0; i++) {
    float m = @in0(i, 0);
    for (index_t k = 1; k < in0_shape1; k++) m = std::max(m, @in0(i, k));
    float s = 0.f;
    for (index_t k = 0; k < in0_shape1; k++) {
        float e = std::exp(@in0(i, k) - m);
        @out(i, k) = e;
        s += e;
    }
    float r = 1.f / s;
    for (index_t k = 0; k < in0_shape1; k++) @out(i, k) *= r;
}
"""


def row_softmax(x):
    """:func:`softmax` over dim 1 of a 2-D float32 jt.Var, forward only: one hand-written kernel on
    the CPU, the generic fused ops on CUDA."""
    j = jt()
    if j.flags.use_cuda or x.ndim != 2 or str(x.dtype) != "float32":
        return softmax(x, dim=1)
    return j.code(x.shape, x.dtype, [x], cpu_src=_ROW_SOFTMAX_CPU)


def log_softmax(x, dim: int = -1):
    """log(softmax(x)) computed as z - log(sum(exp(z))) with z = x - max(x)."""
    z = x - x.max(dim=dim, keepdims=True)
    return z - z.exp().sum(dim=dim, keepdims=True).log()


def logsumexp(x, dim: int):
    """log(sum(exp(x))) along dim (kept) with the max factored out (finite for finite x)."""
    m = x.max(dim=dim, keepdims=True)
    return m + (x - m).exp().sum(dim=dim, keepdims=True).log()


def cross_entropy(logits, onehot, weights=None):
    """Mean cross-entropy against one-hot targets (torch's F.cross_entropy); weights: optional [n]
    row weights summing to 1 (0 on the padded rows of a fixed-shape batch, fewshot._batches)."""
    nll = -(log_softmax(logits, dim=1) * onehot).sum(dim=1)
    return nll.mean() if weights is None else (nll * weights).sum()


def l2_normalize(x, dim: int):
    """x / max(||x||, 1e-12) along `dim` (torch.nn.functional.normalize's definition)."""
    norm = (x * x).sum(dim=dim, keepdims=True).sqrt()
    return x / norm.maximum(1e-12)
