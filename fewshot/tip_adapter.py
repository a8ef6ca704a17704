"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022). Official code: gaopengcuhk/Tip-Adapter.

The cache, the training, the (beta, alpha) search, the defaults and the deviation (the epoch is
chosen on validation, not test, features): docs/METHODS.md, 'Tip-Adapter / Tip-Adapter-F'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from fewshot._batches import as_views, train_adamw
from fewshot._tensor import (
    as_labels,
    as_numpy,
    as_var,
    cross_entropy,
    forward_only,
    jt,
    l2_normalize,
    one_hot,
)


@dataclass(frozen=True)
class TipConfig:
    """Tip-Adapter(-F) hyperparameters; defaults from the official configs/imagenet.yaml and
    main.py (AdamW's weight decay is torch's default, which main.py does not override)."""

    init_beta: float = 1.0
    init_alpha: float = 1.17
    search_scale: tuple[float, float] = (7.0, 3.0)  # (beta, alpha) upper ends
    search_step: tuple[int, int] = (200, 20)  # (beta, alpha) grid sizes
    clip_scale: float = 100.0  # CLIP's logit scale
    lr: float = 1e-3
    eps: float = 1e-4
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 256
    seed: int = 1  # main.py seeds torch with 1; here it seeds the batch order


OFFICIAL = TipConfig()


@forward_only
def build_cache_keys(features) -> np.ndarray:
    """Cache keys [NK, d]: [views, NK, d] or [NK, d] raw image features averaged over the views
    (officially 10 augmented passes), rows L2-normalised."""
    v = as_views(features, "cache features")
    return as_numpy(l2_normalize(v.mean(dim=0), dim=1))


@forward_only
def build_cache_values(labels, num_classes: int) -> np.ndarray:
    """Cache values: one-hot labels [NK, C] (float32)."""
    lab = as_numpy(labels, np.int64).reshape(-1)
    return as_numpy(one_hot(as_labels(lab, lab.shape[0], num_classes), num_classes))


def _cache_logits(X, K, L, beta):
    """exp(-beta (1 - X K^T)) @ L: X [n, d], keys [NK, d], values [NK, C] -> [n, C]."""
    return (-(beta - beta * (X @ K.transpose(1, 0)))).exp() @ L


@forward_only
def tip_logits(X, T, keys, values, alpha: float, beta: float, clip_scale: float = 100.0):
    """Tip-Adapter logits clip_scale X @ T + alpha exp(-beta (1 - X K^T)) @ L (numpy)."""
    Xv = as_var(X, "X", ndim=2)
    Tv = as_var(T, "T [d, C]", ndim=2)
    K, L = as_var(keys, "keys", ndim=2), as_var(values, "values", ndim=2)
    return as_numpy(clip_scale * (Xv @ Tv) + alpha * _cache_logits(Xv, K, L, beta))


def search_grid(search_scale, search_step) -> tuple[list[float], list[float]]:
    """The official (beta, alpha) grids: 0.1 + i (scale - 0.1) / steps for i in range(steps)."""
    betas = [i * (search_scale[0] - 0.1) / search_step[0] + 0.1 for i in range(search_step[0])]
    alphas = [i * (search_scale[1] - 0.1) / search_step[1] + 0.1 for i in range(search_step[1])]
    return betas, alphas


@forward_only
def search_hp(
    X,
    y,
    T,
    keys,
    values,
    search_scale: tuple[float, float] = OFFICIAL.search_scale,
    search_step: tuple[int, int] = OFFICIAL.search_step,
    clip_scale: float = OFFICIAL.clip_scale,
    max_elems: int = 1 << 25,
) -> tuple[float, float, float]:
    """The official grid search of (beta, alpha) on validation features X [n, d], labels y:
    (beta, alpha, accuracy), (0, 0, 0) when no pair classifies any image. Vectorised over alphas
    and chunks of betas (``max_elems`` bounds the [betas, alphas, n, C] block; the last padded)."""
    j = jt()
    Xv = as_var(X, "X", ndim=2)
    Tv = as_var(T, "T", ndim=2)
    K, L = as_var(keys, "keys", ndim=2), as_var(values, "values", ndim=2)
    n, C = Xv.shape[0], Tv.shape[1]
    lab = j.array(as_labels(y, n, C, "validation labels").astype(np.int32))
    betas, alphas = search_grid(search_scale, search_step)
    clip = clip_scale * (Xv @ Tv)
    one_minus_a = 1.0 - Xv @ K.transpose(1, 0)
    a_vec = j.array(np.asarray(alphas, np.float32)).reshape((1, len(alphas), 1, 1))
    chunk = max(1, min(len(betas), max_elems // max(1, len(alphas) * n * max(C, K.shape[0]))))
    counts = []
    j.sync([clip, one_minus_a, lab])
    for start in range(0, len(betas), chunk):
        bc = betas[start : start + chunk]
        bc = bc + [bc[-1]] * (chunk - len(bc))
        b_vec = j.array(np.asarray(bc, np.float32)).reshape((chunk, 1, 1))
        cache = (-(b_vec * one_minus_a)).exp().reshape((chunk * n, -1)) @ L
        logits = clip.unsqueeze(0).unsqueeze(0) + a_vec * cache.reshape((chunk, 1, n, C))
        pred, _ = j.argmax(logits, dim=3)
        cnt = (pred == lab.reshape((1, 1, n))).int32().sum(dim=2)  # [chunk, alphas]
        counts.append(as_numpy(cnt, np.int64)[: min(chunk, len(betas) - start)])
    grid = np.concatenate(counts, axis=0)
    flat = int(np.argmax(grid))  # first maximum in (beta, alpha) row-major order
    bi, ai = divmod(flat, len(alphas))
    best = int(grid[bi, ai])
    if best == 0:
        return 0.0, 0.0, 0.0
    return betas[bi], alphas[ai], best / n


class TipAdapter:
    """Training-free Tip-Adapter: ``fit(train_features, labels, T, val=(X_val, y_val))`` (keys
    from [views, N, d] or [N, d] features; (beta, alpha) searched on val), ``logits(X)``."""

    def __init__(self, config: TipConfig = OFFICIAL, **overrides: Any) -> None:
        self.config = replace(config, **overrides)
        self.keys = self.values = self.T = None
        self.beta, self.alpha = self.config.init_beta, self.config.init_alpha
        self.val_accuracy: float | None = None

    def _setup(self, cache_features, labels, T) -> None:
        self.T = as_numpy(as_var(T, "T [d, C]", ndim=2))
        self.keys = build_cache_keys(cache_features)
        if self.keys.shape[1] != self.T.shape[0]:
            raise ValueError(f"features have d={self.keys.shape[1]}, T is {self.T.shape}")
        self.values = build_cache_values(labels, self.T.shape[1])
        if self.values.shape[0] != self.keys.shape[0]:
            raise ValueError(f"{self.values.shape[0]} labels for {self.keys.shape[0]} features")

    def _search(self, val) -> None:
        if val is None:
            return
        cfg = self.config
        X, y = val
        self.beta, self.alpha, self.val_accuracy = search_hp(
            X, y, self.T, self.keys, self.values, cfg.search_scale, cfg.search_step, cfg.clip_scale
        )

    def fit(self, train_features, labels, T, val: tuple | None = None) -> TipAdapter:
        """Build the cache; with val, grid-search (beta, alpha) on it (else keep the inits)."""
        self._setup(train_features, labels, T)
        self._search(val)
        return self

    def logits(self, X) -> np.ndarray:
        """100 X @ T + alpha * exp(-beta (1 - X K^T)) @ L, numpy [n, C]."""
        if self.keys is None:
            raise RuntimeError(f"{type(self).__name__}: call fit() or from_state_dict() first")
        return tip_logits(
            X, self.T, self.keys, self.values, self.alpha, self.beta, self.config.clip_scale
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """keys [NK, d], values [NK, C], text [d, C], beta [1], alpha [1]."""
        return {
            "keys": self.keys.copy(),
            "values": self.values.copy(),
            "text": self.T.copy(),
            "beta": np.array([self.beta], np.float64),
            "alpha": np.array([self.alpha], np.float64),
        }

    def info(self) -> dict[str, Any]:
        """JSON-friendly configuration and chosen hyperparameters."""
        scalars = ("beta", "alpha", "val_accuracy")
        return {"config": asdict(self.config), **{k: getattr(self, k) for k in scalars}}

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray], config: TipConfig = OFFICIAL):
        """Restore from :meth:`state_dict` output."""
        missing = {"keys", "values", "text", "beta", "alpha"} - set(state)
        if missing:
            raise KeyError(f"Tip-Adapter state is missing {sorted(missing)}")
        obj = cls(config)
        obj.keys, obj.values = as_numpy(state["keys"]), as_numpy(state["values"])
        obj.T = as_numpy(state["text"])
        obj.beta = float(np.asarray(state["beta"]).reshape(-1)[0])
        obj.alpha = float(np.asarray(state["alpha"]).reshape(-1)[0])
        return obj


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys fine-tuned with cross-entropy, then (beta, alpha) searched.

    ``fit(train_features, labels, T, val=(X_val, y_val), cache_features=None)``: train_features
    [views, N, d] or [N, d] (rows L2-normalised here, as officially; epoch e uses view e mod
    views); cache_features (default: train_features) build the initial keys.
    """

    def fit(
        self, train_features, labels, T, val: tuple | None = None, cache_features=None
    ) -> TipAdapterF:
        j = jt()
        cfg = self.config
        views = l2_normalize(as_views(train_features, "train features"), dim=2)
        self._setup(train_features if cache_features is None else cache_features, labels, T)
        V, N, d = views.shape
        if N != self.keys.shape[0]:
            raise ValueError(f"train features have {N} rows but the cache has {self.keys.shape[0]}")
        C = self.T.shape[1]
        Tv, L, K = j.array(self.T), j.array(self.values), j.array(self.keys)
        Y = one_hot(as_labels(labels, N, C), C)
        beta, alpha = cfg.init_beta, cfg.init_alpha

        def batch_loss(K, epoch: int, idx, w):
            f = views[epoch % V][idx]
            logits = cfg.clip_scale * (f @ Tv) + alpha * _cache_logits(f, K, L, beta)
            return cross_entropy(logits, Y[idx], w)

        val_count = None
        if val is not None:
            Xval = as_var(val[0], "val features", ndim=2)
            yval = j.array(as_labels(val[1], Xval.shape[0], C, "val labels").astype(np.int32))
            clip_val = cfg.clip_scale * (Xval @ Tv)
            j.sync([clip_val, yval])

            def val_count(K) -> int:
                lv = clip_val + alpha * _cache_logits(Xval, K, L, beta)
                return int((j.argmax(lv, dim=1)[0] == yval).int32().sum().item())

        j.sync([views, Tv, L, Y, K])
        self.keys = as_numpy(train_adamw(K, batch_loss, N, cfg, val_count)[0])
        self._search(val)
        return self
