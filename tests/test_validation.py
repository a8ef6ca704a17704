"""The board-shaped validation (pipeline.validation): folds, batches, the predicted score and its
interval, paired gains."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import validation as V

# 4 domains of 6 classes; "D" is the unseen domain (no validation image), "C" the expert's.
DOMAINS = np.repeat(np.array(["A", "B", "C", "D"]), 6)
SEEN = np.arange(18)
EXPERT = np.arange(12, 18)


def labels(per_class: int = 10) -> np.ndarray:
    return np.repeat(SEEN, per_class)


def test_fit_and_score_halves_alternate_within_each_class():
    y = np.array([3, 3, 5, 3, 5, 7, 3])
    fit, score = V.split_fit_score(y)
    assert fit.tolist() == [0, 2, 3, 5] and score.tolist() == [1, 4, 6]
    assert set(fit) | set(score) == set(range(len(y))) and not set(fit) & set(score)


def test_folds_hold_out_a_block_of_one_domain_mixed_at_the_share():
    y = labels()
    folds = V.make_folds(y, DOMAINS, SEEN, 4, EXPERT, folds=3, share=0.3, batch=10_000, seed=0)
    assert len(folds) == 3
    blocks = []
    for f in folds:
        held = f.held_out
        assert len(held) == 4 and len(set(DOMAINS[held])) == 1  # one domain's block
        assert not np.isin(held, EXPERT).any()  # never the expert's classes
        assert np.array_equal(f.unseen, np.isin(y[f.rows], held))
        assert np.all(np.diff(f.rows) > 0)  # rows in list order, no repeats
        share = f.unseen.mean()
        assert share == pytest.approx(0.3, abs=0.02)
        assert f.unseen.sum() == 40  # every image of the block
        blocks.append(DOMAINS[held][0])
    assert blocks == ["A", "B", "A"]  # domains in turn
    assert not np.array_equal(folds[0].held_out, folds[2].held_out)


def test_folds_keep_a_seen_class_per_domain_and_respect_the_batch_cap():
    y = labels()
    (f,) = V.make_folds(y, DOMAINS, SEEN, 29, EXPERT, folds=1, share=0.5, batch=10_000, seed=1)
    assert len(f.held_out) == 5  # 6 classes in the domain: one stays seen
    (g,) = V.make_folds(y, DOMAINS, SEEN, 4, EXPERT, folds=1, share=0.3, batch=50, seed=1)
    assert len(g.rows) <= 50 and g.unseen.mean() == pytest.approx(0.3, abs=0.05)
    # a small share needs more seen images than there are: fewer held-out ones, same share
    (h,) = V.make_folds(y, DOMAINS, SEEN, 4, EXPERT, folds=1, share=0.05, batch=10_000, seed=1)
    assert h.unseen.mean() == pytest.approx(0.05, abs=0.01) and (~h.unseen).sum() == 140


def test_without_unseen_classes_one_fold_holds_nothing_out():
    y = labels()
    for folds in (
        V.make_folds(y, DOMAINS, SEEN, 0, EXPERT, folds=3, share=0.3, batch=10_000, seed=0),
        V.make_folds(y, DOMAINS, SEEN, 4, EXPERT, folds=3, share=0.0, batch=10_000, seed=0),
    ):
        (f,) = folds
        assert f.held_out.size == 0 and not f.unseen.any() and len(f.rows) == len(y)


def test_prediction_weights_the_parts_by_the_share_and_brackets_the_value():
    rng = np.random.default_rng(0)
    unseen = [np.arange(400) < 100, np.arange(400) < 120]
    correct = [np.where(u, rng.random(400) < 0.2, rng.random(400) < 0.8) for u in unseen]
    share = 0.28
    want = np.mean(
        [share * c[u].mean() + (1 - share) * c[~u].mean() for c, u in zip(correct, unseen)]
    )
    p = V.predict(correct, unseen, share, n_test=None, seed=0)
    assert p["value"] == pytest.approx(want)
    assert p["low"] < p["value"] < p["high"] and p["high"] - p["low"] < 0.15
    # a small board adds its own sampling: a wider interval around the same value
    q = V.predict(correct, unseen, share, n_test=50, seed=0)
    assert q["value"] == p["value"] and q["high"] - q["low"] > p["high"] - p["low"] + 0.05
    # the interval is honest: over many simulated boards drawn from the same rates, about 95%
    # of the boards' scores fall inside it (rates 0.2 / 0.8 at share 0.28: board mean 0.632)
    boards = rng.binomial(4305, 0.28 * 0.2 + 0.72 * 0.8, 2000) / 4305
    r = V.predict(correct, unseen, share, n_test=4305, seed=0)
    inside = ((boards >= r["low"]) & (boards <= r["high"])).mean()
    assert inside > 0.8


def test_paired_gain_and_its_standard_error():
    rng = np.random.default_rng(1)
    unseen = [np.arange(300) < 90]
    a = [rng.random(300) < 0.6]
    g, se = V.paired_gain(a, a, unseen, 0.3, seed=0)
    assert g == 0 and se == 0
    better = [a[0] | (rng.random(300) < 0.3)]
    g, se = V.paired_gain(better, a, unseen, 0.3, seed=0)
    assert g > 0 and 0 < se < g
    g2, _ = V.paired_gain(a, better, unseen, 0.3, seed=0)
    assert g2 == pytest.approx(-g)


# ------------------------------------------------------------------ the search on planted features

SMALL = "A:8,B:8,Dog:8,Car:4"


def small_search(val_per_class: int, n: int = 120, seed: int = 0, **pins):
    from pipeline.selection import Search
    from pipeline.settings import Settings
    from tests._planted import board_problem, validation_data

    p = board_problem(SMALL, val_per_class=val_per_class, n=n, expert_domain="Dog", seed=seed, d=64)
    settings = Settings.load(None, lpp_epochs=20, **pins)
    return p, settings, Search(validation_data(p), settings, 0.25, n, seed)


def test_search_with_one_validation_image_per_class_scores_on_the_fit_images(caplog):
    pins = dict(flip_tta=True, inmap_prompts="bare", lpp_views="orig", seen_head="lpp")
    _, _, search = small_search(1, **pins)
    assert "no class has two validation images" in caplog.text
    assert all(f.rows.size for f in search.folds)
    result = search.search()
    p = result["predicted_top1"]
    assert 0 <= p["low"] <= p["value"] <= p["high"] <= 1


def test_transclip_is_left_out_on_three_images(caplog):
    from pipeline.scores import apply_transclip

    rng = np.random.default_rng(0)
    X = {"vit": rng.normal(size=(3, 8)).astype(np.float32)}
    T = {"vit": rng.normal(size=(8, 5)).astype(np.float32)}
    s1, s2 = rng.normal(size=(3, 5)), rng.normal(size=(3, 4))
    out = apply_transclip(
        "after", X, T, (X, np.arange(3)), (X, np.arange(3)), s1, s2, np.arange(5), np.arange(4),
        {"vit": 1.0},
    )  # fmt: skip
    assert out[0] is s1 and out[1] is s2
    assert "TransCLIP needs more than 3 images" in caplog.text
