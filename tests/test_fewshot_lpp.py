"""LP++: the data-driven initialisation against the spec, the training loop against a torch
re-statement of the official linear_probe_p2.py (SGD, accumulated alpha gradient), the options,
the state dict, and behaviour on planted features."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")  # before Jittor, as the project asks

import numpy as np  # noqa: E402
from _reference import jittor_scheduler_rates, torch_lpp  # noqa: E402
from test_fewshot_planted import accuracy, planted  # noqa: E402

from fewshot.lpp import CHALLENGE, LPPlusPlus, lpp_init  # noqa: E402

P = planted()


def test_init_matches_the_spec():
    init = lpp_init(P.X_train, P.y_train, P.T)
    F, y, T = P.X_train.astype(np.float64), P.y_train, P.T.astype(np.float64)
    N, C = F.shape[0], T.shape[1]
    W0 = np.stack([F[y == c].sum(0) for c in range(C)])  # per-class SUM, not mean
    np.testing.assert_allclose(init["W0"], W0, rtol=1e-5, atol=1e-6)
    lam = np.linalg.eigvalsh(F.T @ F)[-1]
    assert init["lr_w"] == pytest.approx(4 * N / lam, rel=1e-5)
    FT = F @ T
    assert init["lr_alpha"] == pytest.approx(N / (4 * (FT**2).sum(0).max()), rel=1e-5)


def test_alpha0_is_the_own_class_mean_text_logit_not_the_mean_of_all_entries():
    init = lpp_init(P.X_train, P.y_train, P.T)
    FT = P.X_train.astype(np.float64) @ P.T
    own = np.mean([FT[P.y_train == c, c].mean() for c in range(P.T.shape[1])])
    every = np.mean([FT[P.y_train == c].mean(0) for c in range(P.T.shape[1])])
    assert init["alpha0"] == pytest.approx(250 * own, rel=1e-5)
    assert abs(250 * own - 250 * every) > 1.0  # the two readings differ on this data
    # With one class missing from the training set, alpha0 averages the present classes only.
    keep = P.y_train != 0
    part = lpp_init(P.X_train[keep], P.y_train[keep], P.T)
    own_part = np.mean([FT[P.y_train == c, c].mean() for c in range(1, P.T.shape[1])])
    assert part["alpha0"] == pytest.approx(250 * own_part, rel=1e-5)


@pytest.mark.parametrize(
    "opts",
    [
        {},  # official: accumulated alpha gradient, alpha updated at epochs 10, 20
        {"accumulate_alpha_grad": False},
        {"learn_alpha": False, "schedule": "cosine"},
    ],
    ids=["official", "zeroed-alpha-grad", "frozen-cosine"],
)
def test_training_matches_the_torch_restatement(opts):
    m = LPPlusPlus(epochs=25, **opts).fit(P.X_train, P.y_train, P.T)
    W, b, alpha, _ = torch_lpp(
        P.X_train, P.y_train, P.T, 25,
        learn_alpha=opts.get("learn_alpha", True),
        accumulate=opts.get("accumulate_alpha_grad", True),
        cosine=opts.get("schedule") == "cosine",
    )  # fmt: skip
    np.testing.assert_allclose(m.W, W, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.b, b, atol=1e-4)
    np.testing.assert_allclose(m.alpha, alpha, rtol=1e-5)
    if opts.get("learn_alpha", True):
        assert np.abs(m.alpha - m.alpha0).max() > 1e-3
    else:
        np.testing.assert_array_equal(m.alpha, np.float32(m.alpha0))


def test_accumulated_alpha_gradient_differs_from_a_zeroed_one():
    a = LPPlusPlus(epochs=20).fit(P.X_train, P.y_train, P.T).alpha
    z = LPPlusPlus(epochs=20, accumulate_alpha_grad=False).fit(P.X_train, P.y_train, P.T).alpha
    # At epoch 10 the official step uses the sum of 10 epochs' gradients, the other only the 10th.
    assert np.abs(a - z).max() > 1e-3


def test_best_epoch_is_chosen_on_validation_with_ties_going_to_the_later_epoch():
    m = LPPlusPlus(epochs=40).fit(P.X_train, P.y_train, P.T, val=(P.X_val, P.y_val))
    h = m.val_history
    assert h.shape == (40,)
    assert m.best_epoch == len(h) - 1 - int(np.argmax(h[::-1]))
    W, b, alpha, e = torch_lpp(P.X_train, P.y_train, P.T, 40, val=(P.X_val, P.y_val))
    assert e == m.best_epoch
    np.testing.assert_allclose(m.W, W, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.alpha, alpha, rtol=1e-5)


@pytest.mark.parametrize(
    "epochs, t_max, eta_min", [(31, 15, 1e-5), (1000, 500, 0.0), (60, 60, 0.0)]
)
def test_jittor_cosine_is_jittors_scheduler(epochs, t_max, eta_min):
    from fewshot._optim import jittor_cosine_lr

    want = jittor_scheduler_rates(epochs, t_max, eta_min)
    got = [jittor_cosine_lr(1.0, e, t_max, eta_min) for e in range(epochs)]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-12)
    assert got[0] == got[1] == 1.0  # Jittor's first step returns the base rate again
    if epochs > 2 * t_max:  # restarts: back near the base rate after 2 T_max epochs
        assert got[2 * t_max] > 0.98 and min(got) < 0.01


def test_challenge_config_matches_the_torch_restatement_with_jittors_schedule():
    assert CHALLENGE.epochs == 1000 and not CHALLENGE.learn_alpha
    assert CHALLENGE.schedule == "jittor-cosine" and CHALLENGE.strict_best
    assert CHALLENGE.bias_init == "uniform"
    m = LPPlusPlus(CHALLENGE, epochs=24, t_max=8, seed=5).fit(
        P.X_train, P.y_train, P.T, val=(P.X_val, P.y_val)
    )
    assert m.config.epochs == 24 and m.config.t_max == 8
    assert math.isclose(m.lr_w, lpp_init(P.X_train, P.y_train, P.T)["lr_w"], rel_tol=1e-9)
    b0 = LPPlusPlus(CHALLENGE, epochs=0, seed=5).fit(P.X_train, P.y_train, P.T).b
    W, b, alpha, e = torch_lpp(
        P.X_train, P.y_train, P.T, 24, val=(P.X_val, P.y_val), learn_alpha=False,
        lrs=jittor_scheduler_rates(24, 8), b0=b0, strict=True,
    )  # fmt: skip
    h = m.val_history
    assert e == m.best_epoch == int(np.argmax(h))  # the earliest of the best epochs
    np.testing.assert_allclose(m.W, W, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.b, b, atol=1e-4)


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    m = LPPlusPlus(epochs=5).fit(P.X_train, P.y_train, P.T)
    save_file(m.state_dict(), str(tmp_path / "lpp.safetensors"))
    r = LPPlusPlus.from_state_dict(load_file(str(tmp_path / "lpp.safetensors")))
    np.testing.assert_array_equal(r.logits(P.X_test), m.logits(P.X_test))
    with pytest.raises(KeyError, match="alpha"):
        LPPlusPlus.from_state_dict({k: v for k, v in m.state_dict().items() if k != "alpha"})


def test_uniform_bias_init_is_seeded_and_bounded():
    a = LPPlusPlus(epochs=0, bias_init="uniform", seed=3).fit(P.X_train, P.y_train, P.T)
    b = LPPlusPlus(epochs=0, bias_init="uniform", seed=3).fit(P.X_train, P.y_train, P.T)
    np.testing.assert_array_equal(a.b, b.b)
    assert np.abs(a.b).max() <= 1 / np.sqrt(P.X_train.shape[1]) and np.abs(a.b).max() > 0
    assert not LPPlusPlus(epochs=0).fit(P.X_train, P.y_train, P.T).b.any()


def test_bad_options_and_labels_are_rejected():
    with pytest.raises(ValueError, match="schedule"):
        LPPlusPlus(schedule="step")
    with pytest.raises(ValueError, match="labels must lie in"):
        LPPlusPlus(epochs=1).fit(P.X_train, P.y_train + 100, P.T)


def test_lpp_beats_zero_shot_with_four_shots():
    zs = accuracy(P.X_test @ P.T, P.y_test)
    m = LPPlusPlus().fit(P.X_train, P.y_train, P.T, val=(P.X_val, P.y_val))
    assert accuracy(m.logits(P.X_test), P.y_test) > zs + 0.3


def test_strict_selection_keeps_the_earliest_of_equal_epochs():
    val = (P.X_train, P.y_train)  # the training set itself: its accuracy plateaus at the top
    official = LPPlusPlus(epochs=40).fit(P.X_train, P.y_train, P.T, val=val)
    strict = LPPlusPlus(epochs=40, strict_best=True).fit(P.X_train, P.y_train, P.T, val=val)
    h = official.val_history
    np.testing.assert_array_equal(h, strict.val_history)
    assert (h == h.max()).sum() > 1  # ties exist
    assert (
        strict.best_epoch == int(np.argmax(h)) < official.best_epoch == 39 - int(np.argmax(h[::-1]))
    )
