"""AMU-Tuning (Tang et al., CVPR 2024). Official code: TJU-sjyj/AMU-Tuning (clip/amu.py, train.py).

The fusion, the probe's init and training, the defaults and the deviation (the epoch is chosen on
validation, not test, features): docs/METHODS.md, 'AMU-Tuning'.
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
    softmax,
)

UNCERTAINTY_KINDS = ("moment", "none")


@dataclass(frozen=True)
class AMUConfig:
    """AMU-Tuning hyperparameters; defaults from the official run.sh, default.yaml, train.py."""

    alpha: float = 0.5  # weight of the auxiliary logits in the fusion (default.yaml, run.sh)
    lambda_merge: float = 0.35  # weight of the fused loss (run.sh; parse_args default is 1)
    uncertainty: str = "none"  # run.sh leaves parse_args' 'none'; the paper's method: 'moment'
    power: float = 0.4  # rho of the 'moment' factor
    clip_scale: float = 100.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    eps: float = 1e-4
    epochs: int = 50
    batch_size: int = 8
    seed: int = 1  # run.sh: torch_rand_seed 1; here it seeds the batch order


OFFICIAL = AMUConfig()


def _zscore(x):
    """Per-row (v - mean) / std, std with n - 1 as torch.std (the official ``logit_normalize``)."""
    centred = x - x.mean(dim=1, keepdims=True)
    return centred / ((centred**2).sum(dim=1, keepdims=True) / (x.shape[1] - 1)).sqrt()


def _uncertainty(clip_logits, kind: str, power: float):
    """Fusion factor [n, 1] from CLIP logits [n, C] ('none': 1; 'moment': docs/METHODS.md)."""
    if kind == "none":
        return 1.0
    kurt = (_zscore(softmax(clip_logits, dim=1)) ** 4).mean(dim=1, keepdims=True)
    return 1.0 / (kurt / 250.0).pow(power)


@forward_only
def init_aux_weight(aux_features, labels, num_classes: int) -> np.ndarray:
    """Probe weight [C, d_aux] from raw features [views, N, d_aux] or [N, d_aux] (official
    ``Linear_Adapter`` init, rows normalised as ``load_aux_weight`` does)."""
    j = jt()
    v = as_views(aux_features, "aux features")
    f = l2_normalize(v.mean(dim=0), dim=1)
    N = f.shape[0]
    lab = as_labels(labels, N, num_classes)
    W = one_hot(lab, num_classes).transpose(1, 0) @ f
    j.sync([W])
    return as_numpy(W / (N / num_classes))


class AMUTuning:
    """``fit(clip_features, aux_features, labels, T, val=(clip_val, aux_val, y_val))`` then
    ``logits(clip_X, aux_X)``. Train features are [views, N, d] or [N, d] (epoch e uses view e mod
    views; both inputs have the same number of views, or one of them a single view)."""

    def __init__(self, config: AMUConfig = OFFICIAL, **overrides: Any) -> None:
        self.config = replace(config, **overrides)
        if self.config.uncertainty not in UNCERTAINTY_KINDS:
            raise ValueError(
                f"uncertainty must be one of {UNCERTAINTY_KINDS}, not {self.config.uncertainty!r}"
            )
        self.W = self.T = None
        self.best_epoch: int | None = None

    def _forward(self, xc, xa, W, Tv):
        cfg = self.config
        xc, xa = l2_normalize(xc, 1), l2_normalize(xa, 1)
        clip = cfg.clip_scale * (xc @ Tv)
        aux = _zscore(xa @ W.transpose(1, 0))
        factor = _uncertainty(clip, cfg.uncertainty, cfg.power)
        return clip + factor * aux * cfg.alpha, aux

    def fit(
        self, clip_features, aux_features, labels, T, val: tuple | None = None, init_aux=None
    ) -> AMUTuning:
        """Train the auxiliary probe. init_aux: features for the weight init (default: the
        auxiliary training features, averaged over their views)."""
        j = jt()
        cfg = self.config
        Tv = as_var(T, "T [d, C]", ndim=2)
        vc = as_views(clip_features, "clip features")
        va = as_views(aux_features, "aux features")
        if vc.shape[1] != va.shape[1]:
            raise ValueError(f"{vc.shape[1]} CLIP feature rows but {va.shape[1]} auxiliary rows")
        if vc.shape[0] != va.shape[0] and 1 not in (vc.shape[0], va.shape[0]):
            raise ValueError(f"view counts differ: CLIP {vc.shape[0]}, auxiliary {va.shape[0]}")
        if vc.shape[2] != Tv.shape[0]:
            raise ValueError(f"CLIP features have d={vc.shape[2]}, T is {tuple(Tv.shape)}")
        N, C = vc.shape[1], Tv.shape[1]
        lab = as_labels(labels, N, C)
        Y = one_hot(lab, C)
        W = j.array(init_aux_weight(va if init_aux is None else init_aux, lab, C))
        lam = cfg.lambda_merge

        def batch_loss(W, epoch: int, idx, w):
            fc, fa = vc[epoch % vc.shape[0]], va[epoch % va.shape[0]]
            logits, aux = self._forward(fc[idx], fa[idx], W, Tv)
            y_b = Y[idx]
            return lam * cross_entropy(logits, y_b, w) + (1 - lam) * cross_entropy(aux, y_b, w)

        val_count = None
        if val is not None:
            xc_val = as_var(val[0], "val CLIP features", ndim=2)
            xa_val = as_var(val[1], "val auxiliary features", ndim=2)
            y_val = j.array(as_labels(val[2], xc_val.shape[0], C, "val labels").astype(np.int32))

            def val_count(W) -> int:
                lv, _ = self._forward(xc_val, xa_val, W, Tv)
                return int((j.argmax(lv, dim=1)[0] == y_val).int32().sum().item())

        j.sync([vc, va, Tv, Y, W])
        W, self.best_epoch = train_adamw(W, batch_loss, N, cfg, val_count)
        self.W = as_numpy(W)
        self.T = as_numpy(Tv)
        return self

    def _check(self) -> None:
        if self.W is None:
            raise RuntimeError("AMUTuning: call fit() or from_state_dict() first")

    @forward_only
    def logits(self, clip_X, aux_X) -> np.ndarray:
        """Fused logits [n, C] from CLIP features [n, d] and auxiliary features [n, d_aux]."""
        self._check()
        xc = as_var(clip_X, "CLIP features", ndim=2)
        xa = as_var(aux_X, "auxiliary features", ndim=2)
        lv, _ = self._forward(xc, xa, jt().array(self.W), jt().array(self.T))
        return as_numpy(lv)

    def state_dict(self) -> dict[str, np.ndarray]:
        """aux_weight [C, d_aux] and text [d, C]."""
        self._check()
        return {"aux_weight": self.W.copy(), "text": self.T.copy()}

    def info(self) -> dict[str, Any]:
        """JSON-friendly configuration and the kept epoch."""
        return {"config": asdict(self.config), "best_epoch": self.best_epoch}

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray], config: AMUConfig = OFFICIAL):
        """Restore from :meth:`state_dict` output."""
        missing = {"aux_weight", "text"} - set(state)
        if missing:
            raise KeyError(f"AMU state is missing {sorted(missing)}")
        obj = cls(config)
        obj.W, obj.T = as_numpy(state["aux_weight"]), as_numpy(state["text"])
        return obj
