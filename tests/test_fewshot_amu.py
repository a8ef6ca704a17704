"""AMU-Tuning: uncertainty factor, z-scoring and the feature init against the spec, training
against a torch re-statement of the official AMU_Model + AdamW + cosine, behaviour on planted data
where the auxiliary features carry what CLIP lacks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # before Jittor, as the project asks

import numpy as np  # noqa: E402
from _reference import torch_amu  # noqa: E402
from test_fewshot_planted import accuracy, planted  # noqa: E402

from fewshot import amu as A  # noqa: E402
from fewshot._tensor import as_var  # noqa: E402

Q = planted(paired=True)
C = Q.T.shape[1]


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def test_kurtosis_factor_of_a_peaked_and_of_a_flat_prediction():
    c = 8
    peaked = np.zeros((1, c), np.float32)
    peaked[0, 0] = 60.0  # softmax ~ one-hot
    two_level = np.tile(np.array([1.0, 0.0], np.float32), (1, c // 2))  # flattest non-uniform
    f = A._uncertainty(as_var(np.concatenate([peaked, two_level]), "x"), "moment", 0.4).numpy()
    # Kurtosis with torch.std's n-1: spike (C^2-3C+3)/(C-1) * ((C-1)/C)^2; two-level 1 * same.
    shrink = ((c - 1) / c) ** 2
    k_spike = (c * c - 3 * c + 3) / (c - 1) * shrink
    np.testing.assert_allclose(f[:, 0], [(250 / k_spike) ** 0.4, (250 / shrink) ** 0.4], rtol=1e-4)
    assert f[0, 0] < f[1, 0]  # confident CLIP -> less auxiliary weight
    assert A._uncertainty(as_var(peaked, "x"), "none", 0.4) == 1.0
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        A.AMUTuning(uncertainty="entropy")


def test_zscore_rows_use_bessel_corrected_std():
    x = np.random.default_rng(0).normal(size=(5, 9)).astype(np.float32) * 3 + 1
    ref = (x - x.mean(1, keepdims=True)) / x.std(1, ddof=1, keepdims=True)
    np.testing.assert_allclose(A._zscore(as_var(x, "x")).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_feature_init_is_class_sum_over_n_per_class_of_view_averaged_unit_features():
    rng = np.random.default_rng(1)
    views = rng.normal(size=(2, Q.A_train.shape[0], 5)).astype(np.float32)
    f = unit(views.mean(0))
    ref = np.stack([f[Q.y_train == c].sum(0) for c in range(C)]) / (len(Q.y_train) / C)
    np.testing.assert_allclose(A.init_aux_weight(views, Q.y_train, C), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["none", "moment"])
def test_training_matches_the_torch_restatement(kind):
    # 32 rows, batch 12: the last batch of every epoch is padded (8 real rows).
    m = A.AMUTuning(epochs=3, batch_size=12, uncertainty=kind, seed=4)
    m.fit(Q.X_train, Q.A_train, Q.y_train, Q.T)
    ref = torch_amu(Q.X_train, Q.A_train, Q.y_train, Q.T, 3, 12, 0.5, 0.35, kind, seed=4)
    W0 = A.init_aux_weight(Q.A_train, Q.y_train, C)
    assert np.abs(ref - W0).max() > 1e-3
    np.testing.assert_allclose(m.W, ref, atol=3e-6)


def test_deterministic_for_a_seed_and_seed_dependent():
    args = (Q.X_train, Q.A_train, Q.y_train, Q.T)
    a = A.AMUTuning(epochs=2, seed=1).fit(*args).W
    b = A.AMUTuning(epochs=2, seed=1).fit(*args).W
    c = A.AMUTuning(epochs=2, seed=2).fit(*args).W
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-7


def test_validation_selection_and_state_dict():
    val = (Q.X_val, Q.A_val, Q.y_val)
    m = A.AMUTuning(epochs=4).fit(Q.X_train, Q.A_train, Q.y_train, Q.T, val=val)
    assert 0 <= m.best_epoch < 4
    r = A.AMUTuning.from_state_dict(m.state_dict(), m.config)
    np.testing.assert_array_equal(r.logits(Q.X_test, Q.A_test), m.logits(Q.X_test, Q.A_test))


def test_amu_helps_when_the_auxiliary_features_carry_what_clip_lacks():
    zs = accuracy(Q.X_test @ Q.T, Q.y_test)
    val = (Q.X_val, Q.A_val, Q.y_val)
    args = (Q.X_train, Q.A_train, Q.y_train, Q.T)
    released = accuracy(A.AMUTuning().fit(*args, val=val).logits(Q.X_test, Q.A_test), Q.y_test)
    moment = accuracy(
        A.AMUTuning(uncertainty="moment").fit(*args, val=val).logits(Q.X_test, Q.A_test),
        Q.y_test,
    )
    assert released > zs + 0.25, (zs, released)
    assert moment > zs + 0.4, (zs, moment)
