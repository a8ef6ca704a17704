"""Tip-Adapter(-F): cache formulas and the grid search against numpy, the fine-tuning loop against
torch's own AdamW + CosineAnnealingLR (as in the official main.py), behaviour on planted data."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # before Jittor, as the project asks

import numpy as np  # noqa: E402
from _reference import torch_tip_f  # noqa: E402
from test_fewshot_planted import accuracy, planted  # noqa: E402

from fewshot import tip_adapter as TA  # noqa: E402

P = planted()
C = P.T.shape[1]


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def test_cache_logits_is_exp_minus_beta_one_minus_affinity_times_values():
    K = TA.build_cache_keys(P.X_train)
    L = TA.build_cache_values(P.y_train, C)
    np.testing.assert_array_equal(L, np.eye(C, dtype=np.float32)[P.y_train])
    A = P.X_val.astype(np.float64) @ K.T
    ref = np.exp(-2.5 * (1 - A)) @ L
    cache = TA.tip_logits(P.X_val, P.T, K, L, alpha=1.0, beta=2.5, clip_scale=0.0)
    np.testing.assert_allclose(cache, ref, rtol=1e-5)
    tip = TA.tip_logits(P.X_val, P.T, K, L, alpha=1.7, beta=2.5)
    np.testing.assert_allclose(tip, 100 * P.X_val @ P.T + 1.7 * ref, rtol=1e-5, atol=1e-4)


def test_keys_average_the_raw_views_then_normalise():
    rng = np.random.default_rng(0)
    views = rng.normal(size=(3, 10, 6)).astype(np.float32) * np.array([1, 2, 3])[:, None, None]
    np.testing.assert_allclose(TA.build_cache_keys(views), unit(views.mean(0)), rtol=1e-5)
    np.testing.assert_allclose(TA.build_cache_keys(views[0]), unit(views[0]), rtol=1e-5)


def test_search_grid_is_the_official_one():
    betas, alphas = TA.search_grid((7, 3), (200, 20))
    assert len(betas) == 200 and len(alphas) == 20
    assert betas[0] == alphas[0] == 0.1
    assert betas[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)  # the scale itself is never reached
    assert alphas[1] - alphas[0] == pytest.approx(2.9 / 20)


def test_search_matches_a_plain_loop_with_first_strict_maximum():
    K = TA.build_cache_keys(P.X_train)
    L = TA.build_cache_values(P.y_train, C)
    scale, step = (7.0, 3.0), (13, 6)
    betas, alphas = TA.search_grid(scale, step)
    clip = 100 * P.X_val.astype(np.float64) @ P.T
    A = P.X_val.astype(np.float64) @ K.T
    best = (0.0, 0.0, 0.0)
    for b in betas:
        for a in alphas:
            acc = accuracy(clip + a * (np.exp(-b * (1 - A)) @ L), P.y_val)
            if acc > best[2]:
                best = (b, a, acc)
    # A small element budget forces several beta chunks and a padded last one.
    got = TA.search_hp(P.X_val, P.y_val, P.T, K, L, scale, step, max_elems=5 * 6 * 64 * 32)
    assert got == pytest.approx(best)


def test_tip_adapter_f_training_matches_torch_adamw_and_cosine():
    # Batch 12 over 32 rows: 3 steps per epoch, the last one padded (8 real rows).
    m = TA.TipAdapterF(epochs=3, batch_size=12, seed=5, init_beta=3.0, init_alpha=2.0)
    m.fit(P.X_train, P.y_train, P.T)
    K0 = TA.build_cache_keys(P.X_train)
    L = TA.build_cache_values(P.y_train, C)
    ref = torch_tip_f(P.X_train, P.y_train, P.T, K0, L, 3, 12, 3.0, 2.0, seed=5)
    assert np.abs(ref - K0).max() > 1e-3  # the keys did move
    np.testing.assert_allclose(m.keys, ref, atol=2e-6)
    assert (m.beta, m.alpha) == (3.0, 2.0)  # no val: the initial values stay


def test_tip_adapter_f_is_deterministic_and_uses_views_per_epoch():
    views = np.stack([P.X_train, unit(P.X_train + 0.05)]).astype(np.float32)
    a = TA.TipAdapterF(epochs=2).fit(views, P.y_train, P.T).keys
    b = TA.TipAdapterF(epochs=2).fit(views, P.y_train, P.T).keys
    c = TA.TipAdapterF(epochs=2).fit(views[0], P.y_train, P.T, cache_features=views).keys
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6


def test_state_dict_round_trip():
    m = TA.TipAdapter().fit(P.X_train, P.y_train, P.T, val=(P.X_val, P.y_val))
    r = TA.TipAdapterF.from_state_dict(m.state_dict())
    assert (r.beta, r.alpha) == (m.beta, m.alpha)
    np.testing.assert_array_equal(r.logits(P.X_test), m.logits(P.X_test))


def test_tip_adapter_and_tip_adapter_f_beat_zero_shot_with_four_shots():
    zs = accuracy(P.X_test @ P.T, P.y_test)
    val = (P.X_val, P.y_val)
    tip = accuracy(
        TA.TipAdapter().fit(P.X_train, P.y_train, P.T, val=val).logits(P.X_test), P.y_test
    )
    tipf = accuracy(
        TA.TipAdapterF().fit(P.X_train, P.y_train, P.T, val=val).logits(P.X_test), P.y_test
    )
    assert tip > zs + 0.08, (zs, tip)
    assert tipf > zs + 0.15 and tipf > tip + 0.03, (zs, tip, tipf)
