"""Optimisers with PyTorch's exact update rules over plain jt.Var parameters (why not Jittor's
Adam: docs/METHODS.md, 'Tip-Adapter / Tip-Adapter-F'), and the learning-rate schedules."""

from __future__ import annotations

import math
from typing import Sequence

from fewshot._tensor import jt


def cosine_lr(base_lr: float, step: int, total: int, eta_min: float = 0.0) -> float:
    """Learning rate of torch's CosineAnnealingLR(T_max=total) after `step` scheduler steps (past
    ``total`` the cosine goes on up again, as torch's and Jittor's schedulers do)."""
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * step / total)) / 2.0


def jittor_cosine_lr(base_lr: float, epoch: int, t_max: int, eta_min: float = 0.0) -> float:
    """Learning rate in epoch ``epoch`` (0-based) of a loop that steps Jittor 1.3's
    CosineAnnealingLR(T_max=t_max) after every epoch (the challenge solution): torch's, one epoch
    behind; its recursive update equals this closed form past T_max too: docs/METHODS.md, 'LP++'."""
    return base_lr if epoch == 0 else cosine_lr(base_lr, epoch - 1, t_max, eta_min)


def _leaves(params: list) -> list:
    """Vars made under no_grad, turned into differentiable leaves for the next step."""
    for p in params:
        p.start_grad()
    return params


class AdamW:
    """torch.optim.AdamW (amsgrad off, torch's default betas 0.9, 0.999): decoupled decay, then
    Adam with torch's eps placement.

    p <- p (1 - lr wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: Sequence, eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        j = jt()
        self.b1, self.b2 = 0.9, 0.999
        self.eps = eps
        self.wd = weight_decay
        self.t = 0
        self.m = [j.zeros(p.shape, "float32") for p in params]
        self.v = [j.zeros(p.shape, "float32") for p in params]

    def step(self, params: Sequence, grads: Sequence, lr: float) -> list:
        """One update; returns the new parameters as fresh leaves (no history of earlier steps)."""
        self.t += 1
        bc1 = 1.0 - self.b1**self.t
        bc2_sqrt = math.sqrt(1.0 - self.b2**self.t)
        out = []
        with jt().no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g
                self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g * g
                p = p * (1.0 - lr * self.wd)
                out.append(p - (lr / bc1) * self.m[i] / (self.v[i].sqrt() / bc2_sqrt + self.eps))
        return _leaves(out)

    def state(self) -> list:
        """Vars to sync together with the parameters, so the lazy graph never grows."""
        return self.m + self.v


class SGDMomentum:
    """torch.optim.SGD with momentum, no dampening, no Nesterov, no weight decay.

    buf <- momentum * buf + g (buf starts at 0: equals g after the first step);  p <- p - lr buf
    """

    def __init__(self, params: Sequence, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.buf = [jt().zeros(p.shape, "float32") for p in params]

    def step(self, params: Sequence, grads: Sequence, lr: float) -> list:
        """One update; returns the new parameters as fresh leaves."""
        out = []
        with jt().no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                self.buf[i] = self.momentum * self.buf[i] + g
                out.append(p - lr * self.buf[i])
        return _leaves(out)

    def state(self) -> list:
        """Vars to sync together with the parameters."""
        return list(self.buf)
