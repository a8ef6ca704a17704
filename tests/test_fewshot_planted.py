"""Planted CLIP-like feature data shared by the fewshot tests (and checks of its own structure).

Image features: unit vectors clustered around class centres, all shifted by one "image modality"
offset. Text embeddings: the class centres perturbed (so zero-shot is imperfect) and shifted by a
different "text modality" offset: the modality gap of CLIP. Auxiliary features (for AMU) live in
another space where the classes that CLIP confuses in pairs are separable.

Shapes are shared by every fewshot test so Jittor compiles each kernel once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

D, C, D_AUX = 32, 8, 24
N_TEST_PER_CLASS, SHOTS, N_VAL_PER_CLASS = 50, 4, 8


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=axis, keepdims=True)).astype(np.float32)


@dataclass
class Planted:
    T: np.ndarray  # [D, C] text classifier, unit columns
    X_test: np.ndarray  # [C * 50, D]
    y_test: np.ndarray
    X_train: np.ndarray  # [SHOTS * C, D]
    y_train: np.ndarray
    X_val: np.ndarray  # [8 * C, D]
    y_val: np.ndarray
    A_train: np.ndarray  # auxiliary features [SHOTS * C, D_AUX] (raw, not normalised)
    A_val: np.ndarray
    A_test: np.ndarray


def planted(
    seed: int = 0,
    spread: float = 1.1,
    text_noise: float = 1.0,
    gap: float = 3.0,
    paired: bool = False,
) -> Planted:
    """Generate one planted problem.

    spread: norm of the within-class noise of the image features (class centres: unit vectors);
    text_noise: norm of the perturbation of the text embeddings; gap: norm of each modality's
    offset. paired: classes 2k and 2k+1 share their CLIP image centre and almost their text
    (only the auxiliary features tell them apart), the situation AMU's auxiliary branch is for.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(C, D)))
    text_dirs = _unit(centres + text_noise * _unit(rng.normal(size=(C, D))))
    if paired:
        centres[1::2] = centres[0::2]
        text_dirs[1::2] = _unit(text_dirs[0::2] + 0.02 * _unit(rng.normal(size=(C // 2, D))))
    # The two offsets share part of their direction, so image-text cosines sit around CLIP's
    # typical 0.2-0.3 while image-image cosines are far higher.
    u, v = _unit(rng.normal(size=D)), _unit(rng.normal(size=D))
    img_gap = gap * u
    txt_gap = gap * _unit(0.35 * u + v)
    T = _unit(text_dirs + txt_gap, axis=1).T.copy()
    aux_centres = _unit(rng.normal(size=(C, D_AUX)))

    def draw(per_class: int):
        y = np.repeat(np.arange(C), per_class)
        noise = spread * rng.normal(size=(len(y), D)) / np.sqrt(D)
        X = _unit(centres[y] + noise + img_gap)
        A = 3.0 * (aux_centres[y] + 0.35 * rng.normal(size=(len(y), D_AUX)) / np.sqrt(D_AUX) * 2)
        return X, y, A.astype(np.float32)

    Xtr, ytr, Atr = draw(SHOTS)
    Xva, yva, Ava = draw(N_VAL_PER_CLASS)
    Xte, yte, Ate = draw(N_TEST_PER_CLASS)
    return Planted(T, Xte, yte, Xtr, ytr, Xva, yva, Atr, Ava, Ate)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == y).mean())


def test_planted_has_a_modality_gap_and_imperfect_zero_shot():
    p = planted()
    assert p.T.shape == (D, C) and p.X_test.shape == (C * N_TEST_PER_CLASS, D)
    np.testing.assert_allclose(np.linalg.norm(p.T, axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p.X_test, axis=1), 1, atol=1e-5)
    # Modality gap: an image is closer to other images than to any text embedding.
    img_img = (p.X_test[:50] @ p.X_test[50:100].T).mean()
    img_txt = (p.X_test @ p.T).max(1).mean()
    assert img_img > img_txt + 0.1
    # CLIP-like scale: image-text cosines ~0.3, top-1 vs top-2 margins of a few hundredths.
    S = np.sort(p.X_test @ p.T, axis=1)
    assert 0.15 < S.mean() < 0.5 and (S[:, -1] - S[:, -2]).mean() < 0.06
    zs = accuracy(p.X_test @ p.T, p.y_test)
    # Zero-shot is poor while the image clusters are separable: room for every method to gain.
    means = np.stack([p.X_test[p.y_test == c].mean(0) for c in range(C)])
    assert 0.3 < zs < 0.7 and accuracy(p.X_test @ means.T, p.y_test) > 0.97, zs


def test_planted_paired_classes_confuse_clip_but_not_the_aux_space():
    p = planted(paired=True)
    zs = accuracy(p.X_test @ p.T, p.y_test)
    # Nearest auxiliary class mean, from the training shots only.
    means = np.stack([p.A_train[p.y_train == c].mean(0) for c in range(C)])
    aux = accuracy(-((p.A_test[:, None, :] - means[None]) ** 2).sum(-1), p.y_test)
    assert zs < 0.7 and aux > 0.9, (zs, aux)
