"""The cascade's routing and the evaluation metrics, on hand-made score arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cascade import EXPERT, SEEN, UNSEEN, fuse, run_cascade, topk
from pipeline.evaluation import accuracy, cascade_metrics, routing

# 10 classes: 0-5 seen (3-5 are "dogs" for the expert), 6-9 unseen.
SEEN_IDS = np.arange(6)
UNSEEN_IDS = np.arange(6, 10)
DOG_IDS = np.array([3, 4, 5])


def one_hot_scores(n_cols: int, best: list[int], second: list[int] | None = None) -> np.ndarray:
    s = np.zeros((len(best), n_cols), np.float32)
    s[np.arange(len(best)), best] = 2.0
    if second is not None:
        s[np.arange(len(best)), second] = 1.0
    return s


def test_topk_orders_and_breaks_ties_by_lower_index():
    s = np.array([[0.1, 0.5, 0.5, 0.2, 0.9, 0.0]])
    np.testing.assert_array_equal(topk(s, 5), [[4, 1, 2, 3, 0]])
    np.testing.assert_array_equal(topk(s, 3, ids=np.arange(6) + 100), [[104, 101, 102]])


def test_fuse_weights_and_shape_checks():
    a, b = np.ones((2, 3)), np.full((2, 3), 2.0)
    np.testing.assert_allclose(fuse([a, b], (0.6, 0.4)), np.full((2, 3), 1.4), rtol=1e-6)
    with pytest.raises(ValueError):
        fuse([a, np.ones((2, 4))], (0.5, 0.5))
    with pytest.raises(ValueError):
        fuse([a], (0.5, 0.5))


def test_routing_unseen_seen_expert():
    # image 0: stage 1 says unseen class 7 -> answered by stage 1
    # image 1: stage 1 says seen class 1 -> probe answers (its top-1 is class 2, not a dog)
    # image 2: stage 1 says seen; the probe says dog 4 -> the expert answers (its top-1 is dog 5)
    all_scores = one_hot_scores(10, [7, 1, 3], [8, 0, 4])
    seen_scores = one_hot_scores(6, [0, 2, 4], [1, 3, 3])
    expert_scores = one_hot_scores(3, [0, 1, 2], [1, 0, 1])
    asked = []

    def expert(rows):
        asked.append(rows.tolist())
        return expert_scores[rows]

    r = run_cascade(all_scores, UNSEEN_IDS, seen_scores, SEEN_IDS, DOG_IDS, expert)
    assert asked == [[2]]  # routed once; the expert scores only the images routed to it
    np.testing.assert_array_equal(r.stage, [UNSEEN, SEEN, EXPERT])
    np.testing.assert_array_equal(r.top1, [7, 2, 5])
    assert r.top5[0, 1] == 8  # stage-1 ranking over all classes
    assert set(r.top5[1]) <= set(SEEN_IDS)  # the probe only ranks seen classes
    assert set(r.top5[2][:3]) == set(DOG_IDS) and r.top5[2, 1] == 4  # expert ranks dogs


def test_unseen_classes_only_reachable_through_stage_one():
    rng = np.random.default_rng(0)
    n = 200
    all_scores = rng.normal(size=(n, 10)).astype(np.float32)
    seen_scores = rng.normal(size=(n, 6)).astype(np.float32)
    expert_scores = rng.normal(size=(n, 3)).astype(np.float32)
    r = run_cascade(
        all_scores, UNSEEN_IDS, seen_scores, SEEN_IDS, DOG_IDS, lambda rows: expert_scores[rows]
    )
    answered_unseen = np.isin(r.top1, UNSEEN_IDS)
    np.testing.assert_array_equal(answered_unseen, r.stage == UNSEEN)
    np.testing.assert_array_equal(r.stage == EXPERT, ~answered_unseen & np.isin(r.top1, DOG_IDS))
    # every row: 5 distinct valid ids
    assert all(len(set(row)) == 5 for row in r.top5)
    assert r.top5.min() >= 0 and r.top5.max() < 10


def test_no_unseen_classes_means_stage_one_answers_nothing():
    all_scores = one_hot_scores(6, [1, 4])
    seen_scores = one_hot_scores(6, [2, 3])
    r = run_cascade(all_scores, np.array([], int), seen_scores, SEEN_IDS)
    np.testing.assert_array_equal(r.stage, [SEEN, SEEN])
    np.testing.assert_array_equal(r.top1, [2, 3])


def test_non_finite_scores_name_the_stage():
    all_scores = one_hot_scores(10, [1, 2])
    seen_scores = one_hot_scores(6, [1, 2])
    seen_scores[1, 3] = np.nan
    with pytest.raises(FloatingPointError, match="seen"):
        run_cascade(all_scores, UNSEEN_IDS, seen_scores, SEEN_IDS)
    seen_scores[1, 3] = 0.0
    seen_scores[:, 4] = 5.0  # both routed to the expert, whose scores are broken
    with pytest.raises(FloatingPointError, match="expert"):
        run_cascade(
            all_scores,
            UNSEEN_IDS,
            seen_scores,
            SEEN_IDS,
            DOG_IDS,
            lambda r: np.full((2, 3), np.inf),
        )
    with pytest.raises(ValueError, match="expert scores"):
        run_cascade(
            all_scores, UNSEEN_IDS, seen_scores, SEEN_IDS, DOG_IDS, lambda r: np.ones((2, 2))
        )


def test_expert_with_fewer_classes_than_k_fills_from_probe():
    all_scores = one_hot_scores(10, [0])
    seen_scores = np.array([[0.0, 0.1, 0.2, 0.3, 0.9, 0.5]], np.float32)  # probe top-1: dog 4
    expert = np.array([[1.0, 2.0]])
    r = run_cascade(
        all_scores, UNSEEN_IDS, seen_scores, SEEN_IDS, [4, 5], lambda rows: expert[rows]
    )
    np.testing.assert_array_equal(r.top5[0], [5, 4, 3, 2, 1])


def test_metrics_accuracy_and_routing():
    labels = np.array([7, 2, 5, 1])
    top5 = np.array([[7, 0, 1, 2, 3], [1, 2, 0, 3, 4], [5, 4, 3, 0, 1], [0, 2, 3, 4, 5]])
    stage = np.array([UNSEEN, SEEN, EXPERT, UNSEEN])
    acc = accuracy(top5, labels)
    assert acc == {"n": 4, "top1": 0.5, "top5": 0.75}
    u = routing(stage, labels, UNSEEN, UNSEEN_IDS)
    assert u == {"routed": 2, "owned": 1, "precision": 0.5, "recall": 1.0}
    report = cascade_metrics(
        top5, stage, labels, np.array(["car", "a", "dog", "a"]), UNSEEN_IDS, DOG_IDS
    )
    assert report["per_domain"]["a"] == {"n": 2, "top1": 0.0, "top5": 0.5}
    assert report["per_stage"]["expert"]["top1"] == 1.0
    assert report["routing"]["expert"]["recall"] == 1.0


def test_report_writes_markdown_and_plots(tmp_path):
    from pipeline.evaluation import write_report

    labels = np.array([7, 2, 5, 1])
    top5 = np.array([[7, 0, 1, 2, 3], [1, 2, 0, 3, 4], [5, 4, 3, 0, 1], [0, 2, 3, 4, 5]])
    stage = np.array([UNSEEN, SEEN, EXPERT, UNSEEN])
    domains = np.array(["car", "a", "dog", "a"])
    metrics = cascade_metrics(top5, stage, labels, domains, UNSEEN_IDS, DOG_IDS)
    estimate = {"value": 0.61, "low": 0.5, "high": 0.7}
    board = {
        "predicted_top1": estimate,
        "choice": {"stage1": "challenge", "flip_tta": True},
        "folds": [{}, {}],
        "unseen_share": 0.28,
        "n_test": 4305,
        "breakdown": {
            "per_domain": {"a": 0.7, "unseen (held out)": 0.3},
            "per_stage": {
                "unseen": {"share": 0.3, "top1": 0.4},
                "expert": {"share": 0.0, "top1": None},
            },
        },
        "candidates": [
            {"choice": "stage1", "option": "challenge", "estimate": estimate, "gain": 0.0,
             "se": 0.0, "chosen": True},
            {"choice": "stage1", "option": "official-gamma0", "estimate": estimate,
             "gain": -0.012, "se": 0.004, "chosen": False},
        ],
    }  # fmt: skip
    path = write_report(
        tmp_path,
        metrics,
        timings={"encode": 1.5, "inmap": 0.2},
        params={"clip": 1000, "expert": 234},
        board=board,
    )
    text = path.read_text()
    assert "Total parameters loaded: **1,234**" in text
    assert "| dog | 1 | 1.0000 | 1.0000 |" in text
    assert "predicted top-1 **0.6100**, 95% interval 0.5000 - 0.7000" in text
    assert "| stage1 | challenge (chosen) | 0.6100 | 0.5000 - 0.7000 | +0.0000 +- 0.0000 |" in text
    assert "| stage1 | official-gamma0 | 0.6100 |" in text and "-0.0120 +- 0.0040" in text
    assert "| unseen (held out) | 0.3000 |" in text
    for png in ("per_domain.png", "timings.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
