"""InMaP: Sinkhorn, hard labels, proxy descent (official and challenge variants) against numpy
re-statements of the spec (docs/METHODS.md), plus behaviour on planted CLIP-like features."""

from __future__ import annotations

import numpy as np
import pytest
from test_fewshot_planted import accuracy, planted

from fewshot import inmap as I
from fewshot._tensor import as_var, jt

RNG = np.random.default_rng(7)
N, D, C = 60, 12, 5


def unit(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def small_problem(seed=0):
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(C, D)), 1)
    y = np.arange(N) % C
    X = unit(centres[y] + 0.4 * rng.normal(size=(N, D)), 1).astype(np.float32)
    T = unit(centres.T + 0.5 * rng.normal(size=(D, C)), 0).astype(np.float32)
    return X, T, y


# ---- numpy re-statements of the spec (float64) ----


def np_softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def np_sinkhorn(M, tau_t, gamma, iters, dtype=np.float64):
    n, c = M.shape
    P = np_softmax(M.astype(dtype) / dtype(tau_t)) / dtype(n)
    q = None
    if gamma > 0:
        q = P.sum(0, keepdims=True) ** gamma
        q = q / q.sum()
    for _ in range(iters):
        P = P / P.sum(0, keepdims=True)
        P = P * q if q is not None else P / c
        P = P / P.sum(1, keepdims=True)
        P = P / n
    return P * n


def np_proxies(X, W0, Y, lr, iters, tau_i, alpha, normalize=True, prev=np.inf):
    X, W, Y = (a.astype(np.float64) for a in (X, W0, Y))
    Y = Y.copy()
    hard = Y.max(1) > alpha
    Y[hard] = np.eye(Y.shape[1])[Y[hard].argmax(1)]
    base = X.T @ Y
    halvings = 0
    for _ in range(iters):
        G = X.T @ np_softmax(X @ W / tau_i) - base
        norm = np.linalg.norm(G)
        if norm > prev:
            lr /= 2
            halvings += 1
        prev = norm
        W = W - lr / (X.shape[0] * tau_i) * G
        if normalize:
            W = W / np.maximum(np.linalg.norm(W, axis=0, keepdims=True), 1e-12)
    return W, halvings


def np_inmap_challenge(X, T, tau_t=0.01, iters_s=100, lr=10.0, iters_p=20):
    Tsm = np.exp(T - T.max(1, keepdims=True))
    Tsm = Tsm / Tsm.sum(1, keepdims=True)
    Y0 = np_softmax(X.astype(np.float64) @ Tsm / tau_t)
    W1, _ = np_proxies(X, T, Y0, lr, iters_p, 1.0, 1.0, normalize=False, prev=-100.0)
    Y1 = np_sinkhorn(X @ W1, tau_t, 0.0, iters_s)
    W2, _ = np_proxies(X, W1, Y1, lr, iters_p, 1.0, 1.0, normalize=False, prev=-100.0)
    return W2


# ---- Sinkhorn ----


def test_sinkhorn_rows_sum_to_one_and_columns_reach_the_uniform_marginal():
    M = (0.3 * RNG.normal(size=(N, C))).astype(np.float32)
    P = I.sinkhorn(M, tau_t=0.1, iters=300)
    assert P.dtype == np.float32 and P.shape == (N, C)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(P.sum(0), N / C, rtol=1e-3)
    # Few iterations have not converged: the official default (20) is not a full projection.
    assert np.abs(I.sinkhorn(M, tau_t=0.1, iters=1).sum(0) - N / C).max() > 1e-2


def test_sinkhorn_gamma_marginal_is_colsum_power_gamma():
    M = (0.3 * RNG.normal(size=(N, C))).astype(np.float32)
    M[:, 0] += 0.05  # an unbalanced softmax marginal
    gamma, tau = 0.5, 0.1
    q = np_softmax(M / tau).sum(0) / N
    q = q**gamma / (q**gamma).sum()
    P = I.sinkhorn(M, tau_t=tau, gamma=gamma, iters=300)
    np.testing.assert_allclose(P.sum(0), N * q, rtol=1e-3)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-5)
    # gamma = 1 keeps the softmax marginal: the rows barely move from softmax(M / tau).
    np.testing.assert_allclose(I.sinkhorn(M, tau, 1.0, 300), np_softmax(M / tau), atol=1e-4)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_sinkhorn_matches_the_multiplicative_reference(gamma):
    M = (0.3 * RNG.normal(size=(N, C))).astype(np.float32)
    np.testing.assert_allclose(
        I.sinkhorn(M, 0.01, gamma, 20), np_sinkhorn(M, 0.01, gamma, 20), atol=2e-5
    )


def test_sinkhorn_survives_a_class_column_that_underflows():
    M = (0.3 * RNG.normal(size=(N, C))).astype(np.float32)
    M[:, 2] -= 3.0  # exp(-300) flushes to 0 in float32: the official loop returns NaN here
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(np_sinkhorn(M, 0.01, 0.0, 20, dtype=np.float32)).any()
    P = I.sinkhorn(M, 0.01, 0.0, 300)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-4)
    assert P.sum(0)[2] > 0.5 * N / C  # the starved class gets (most of) its share


# ---- hard labels and proxies ----


def test_hard_labels_threshold_is_strictly_above_alpha():
    Y = np.array(
        [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.61, 0.19], [0.34, 0.33, 0.33]], np.float32
    )
    H = I._hard_labels(as_var(Y, "Y", ndim=2), 0.6).numpy()
    np.testing.assert_array_equal(H[0], [1, 0, 0])
    np.testing.assert_allclose(H[1], Y[1])  # max == alpha stays soft
    np.testing.assert_array_equal(H[2], [0, 1, 0])
    np.testing.assert_allclose(H[3], Y[3])


def test_vision_proxies_match_the_spec_including_lr_halvings():
    X, T, _ = small_problem()
    Y = np_sinkhorn(X @ T, 0.01, 0.0, 20).astype(np.float32)
    # A large lr makes the descent overshoot, so the gradient norm grows and lr is halved.
    W_ref, halvings = np_proxies(X, T, Y, lr=400.0, iters=5, tau_i=0.04, alpha=0.6)
    assert halvings >= 1
    W = I.vision_proxies(X, T, Y, lr=400.0, iters=5)
    np.testing.assert_allclose(W, W_ref, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, rtol=1e-5)


def test_lr_halving_starts_at_the_first_step_only_in_the_challenge_variant():
    X, T, _ = small_problem()
    Y = np_softmax(X @ T / 0.01).astype(np.float32)
    args = (as_var(X), as_var(T), as_var(Y), 1.0, 1, 0.04, 0.6)
    # One step, unnormalised: only the initial comparison can halve it.
    full = I._proxy_descent(*args, normalize=False, halve_first=False).numpy() - T
    half = I._proxy_descent(*args, normalize=False, halve_first=True).numpy() - T
    np.testing.assert_allclose(half, full / 2, rtol=1e-5, atol=1e-6)
    assert np.abs(full).max() > 1e-2


def test_inmap_is_sinkhorn_then_proxies():
    X, T, _ = small_problem(1)
    Y = np_sinkhorn(X @ T, 0.01, 0.0, 20)
    W_ref, _ = np_proxies(X, T, Y, 10.0, 30, 0.04, 0.6)
    np.testing.assert_allclose(I.inmap(X, T, iters_proxy=30), W_ref, atol=2e-4)


def test_inmap_challenge_matches_the_spec():
    X, T, _ = small_problem(2)
    W = I.inmap_challenge(X, T)
    W_ref = np_inmap_challenge(X, T)
    assert np.isfinite(W_ref).all()
    np.testing.assert_allclose(W, W_ref, atol=1e-3 * np.abs(W_ref).max())
    # No column normalisation in this variant.
    assert np.abs(np.linalg.norm(W, axis=0) - 1).max() > 1e-2
    np.testing.assert_allclose(I.run_inmap(X, T, "challenge"), W)


def test_inputs_may_be_jt_vars_and_outputs_are_numpy():
    X, T, _ = small_problem()
    W_np = I.inmap(X, T, iters_proxy=10)
    W_jt = I.inmap(jt().array(X), jt().array(T), iters_proxy=10)
    assert isinstance(W_jt, np.ndarray) and W_jt.dtype == np.float32
    np.testing.assert_array_equal(W_np, W_jt)  # deterministic


def test_shape_errors_name_the_problem():
    X, T, _ = small_problem()
    with pytest.raises(ValueError, match=r"T must be \[d, C\]"):
        I.inmap(X, T.T)
    with pytest.raises(ValueError, match="variant"):
        I.run_inmap(X, T, "nope")


def test_inmap_beats_zero_shot_under_a_modality_gap_on_balanced_classes():
    p = planted()
    zs = accuracy(p.X_test @ p.T, p.y_test)
    official = accuracy(p.X_test @ I.inmap(p.X_test, p.T), p.y_test)
    challenge = accuracy(p.X_test @ I.inmap_challenge(p.X_test, p.T), p.y_test)
    assert official > zs + 0.25, (zs, official)
    assert challenge > zs + 0.25, (zs, challenge)
