"""A torch restatement of the released TransCLIP solver, for tests only.

Written from reading MaxZanella/transduction-for-vlms, TransCLIP_solver/TransCLIP.py and
TransCLIP_utils.py (not copied). Dense affinity instead of torch.sparse (the same products at test
sizes), CPU, any float dtype. The released behaviour is kept, quirks included; the switches turn a
quirk off where a test compares against the intended method:

* ``intended_order``: the few-shot affinity rows are stacked [shots; queries] while z is stacked
  [queries; shots] (False, released), or both [queries; shots] (True);
* ``shot_drops_nearest``: every affinity row keeps neighbours 2..k+1 of its k+1 nearest images
  (released: right for an image, whose nearest is itself; a shot loses its nearest image), or a
  shot keeps its k nearest (False);
* always as released: the class count is the number of distinct query labels and shot labels are
  one-hot encoded without a class count; with initial predictions on the zero-shot path y_hat and z
  are one tensor (each z update overwrites the anchor); the gammas run one after another, each from
  the previous gamma's final state; a validation image is predicted by its nearest query image; the
  z of the last gamma is returned.

Import torch before Jittor: import this module before ``fewshot``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 50.0


def affinity(query, shots=None, k=3, intended_order=False, shot_drops_nearest=True):
    """Dense kNN affinity [rows, n] with cosine weights; rows: queries, or queries and shots."""
    n = query.shape[0]

    def rows(sim, drop_first):
        top = sim.topk(k + 1, dim=1).indices
        top = top[:, 1:] if drop_first else top[:, :k]
        return torch.zeros_like(sim).scatter_(1, top, sim.gather(1, top))

    W_q = rows(query @ query.T, True)
    if shots is None:
        return W_q
    W_s = rows(shots @ query.T, shot_drops_nearest)
    assert W_s.shape[1] == n
    return torch.cat([W_q, W_s]) if intended_order else torch.cat([W_s, W_q])


def log_gaussian(x, mu, var):
    """-0.5 sum_d (x_d - mu_kd)^2 / var_d for every image and class ([n, K])."""
    return -0.5 * (((x[:, None, :] - mu[None]) ** 2) / var).sum(-1)


def update_z(loglik, yhat, z, W, lam, k, shot_labels=None, iters=5):
    """Inner z iterations; writes the query rows of z in place, returns the stacked z."""
    n = loglik.shape[0]
    if shot_labels is not None:
        z = torch.cat([z.clone(), F.one_hot(shot_labels).to(z.dtype)])
    for _ in range(iters):
        inter = loglik + (TEMPERATURE / (2 * k)) * (W.T @ z + (W @ z[:n])[:n])
        inter = inter - inter.max(dim=1, keepdim=True).values
        inter = yhat**lam * torch.exp(inter / TEMPERATURE)
        z[:n] = inter / inter.sum(dim=1, keepdim=True)
    return z


def update_mu(gamma, query, z, shots=None, shot_labels=None):
    n = z.shape[0]
    num = (z / n).T @ query
    den = z.sum(0) / n
    if shots is not None:
        oh = F.one_hot(shot_labels).to(z.dtype)
        w = gamma * TEMPERATURE / oh.shape[0]
        num = num + w * oh.T @ shots
        den = den + w * oh.sum(0)
    mu = num / den[:, None]
    return mu / mu.norm(dim=1, keepdim=True)


def update_sigma(mu, gamma, query, z, shots=None, shot_labels=None):
    n = z.shape[0]
    acc = torch.einsum("ik,ikd->d", z, (query[:, None, :] - mu[None]) ** 2) / n
    if shots is not None and gamma > 0:
        oh = F.one_hot(shot_labels).to(z.dtype)
        w = gamma * TEMPERATURE / oh.shape[0]
        acc = acc + w * torch.einsum("ik,ikd->d", oh, (shots[:, None, :] - mu[None]) ** 2)
        return acc / (z.sum() / n + w * oh.sum())
    return acc / (z.sum() / n)


def init_mu(K, z, query, shots=None, shot_labels=None, n_confident=8):
    if shots is not None:
        mu = F.one_hot(shot_labels).to(query.dtype).T @ shots
    else:
        mu = torch.zeros(K, query.shape[1], dtype=query.dtype)
        top = z.topk(n_confident, dim=0).indices  # [8, K]
        for c in range(K):
            mu[c] = (query[top[:, c]] * z[top[:, c], c : c + 1]).mean(0)
    return mu / mu.norm(dim=1, keepdim=True)


def solver(
    query,
    query_labels,
    text,
    shots=None,
    shot_labels=None,
    val=None,
    init=None,
    gammas=(0.002, 0.01, 0.02, 0.2),
    intended_order=False,
    shot_drops_nearest=True,
    iters=10,
    k=3,
):
    """The released TransCLIP_solver: returns (z [n, K], validation accuracy per gamma)."""
    K = len(torch.unique(query_labels))
    n, d = query.shape
    few = shots is not None
    if init is not None:
        yhat = z = init.clone()  # one tensor, as released (the clone spares the caller's)
    else:
        logits = 100 * query @ text
        yhat, z = F.softmax(logits, dim=1), F.softmax(logits, dim=1)
    lam, gamma_list = (0.5, list(gammas)) if few else (1.0, [0.0])
    nearest = None if val is None else (val[0] @ query.T).argmax(dim=1)
    mu = init_mu(K, z, query, shots, shot_labels)
    var = torch.full((d,), 1.0 / d, dtype=query.dtype)
    W = affinity(query, shots, k, intended_order, shot_drops_nearest)
    val_acc = {}
    for gamma in gamma_list:
        for it in range(iters + 1):
            ll = log_gaussian(query, mu, var)
            z = update_z(ll, yhat, z, W, lam, k, shot_labels if few else None)[:n]
            if it == iters:
                if nearest is not None:
                    pred = z[nearest].argmax(dim=1)
                    val_acc[gamma] = float((pred == val[1]).double().mean())
                break
            mu = update_mu(gamma, query, z, shots, shot_labels)
            var = update_sigma(mu, gamma, query, z, shots, shot_labels)
    return z, val_acc
