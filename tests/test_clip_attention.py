"""The two attention paths of models.clip.attention against the formula, in numpy."""

from __future__ import annotations

import _reference as R  # noqa: F401  (torch before Jittor)
import numpy as np
import pytest

from models.runtime import jittor

jt = jittor("cpu")
from models.clip import attention  # noqa: E402
from models.clip.model import CLIP  # noqa: E402


def _numpy_attention(qkv: np.ndarray, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(d) [+ causal mask]) v per sample and head, in float64."""
    q, k, v = (qkv[:, :, i].astype(np.float64).transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3)  # [N, L, H, d]


@pytest.mark.parametrize("length", [1, 7, 50])
@pytest.mark.parametrize("causal", [False, True])
def test_both_paths_equal_the_formula(length, causal):
    rng = np.random.default_rng(length)
    qkv = (2 * rng.standard_normal((3, length, 3, 2, 64))).astype(np.float32)
    want = _numpy_attention(qkv, causal)
    mask = None
    if causal:
        mask = jt.array(np.triu(np.full((length, length), -1e30, np.float32), 1))
    with jt.no_grad():
        fused = attention.fused_attention(jt.array(qkv), causal).numpy()
    plain = attention.matmul_attention(jt.array(qkv), mask).numpy()
    np.testing.assert_allclose(fused, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(plain, want, atol=1e-5, rtol=1e-5)


def test_fused_kernel_is_used_exactly_under_no_grad(monkeypatch):
    calls = []
    real = attention.fused_attention

    def spy(qkv, causal):
        calls.append(causal)
        return real(qkv, causal)

    monkeypatch.setattr(attention, "fused_attention", spy)
    model = CLIP(**R.SMALL_VIT, seed=0)
    model.eval()
    tokens = np.zeros((2, 77), np.int64)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, 320, 49407
    images = np.zeros((2, 3, 32, 32), np.float32)
    model.encode_text(tokens).sync()
    model.encode_image(images).sync()
    assert calls == []
    with jt.no_grad():
        model.encode_text(tokens).sync()
        model.encode_image(images).sync()
    n = R.SMALL_VIT["transformer_layers"]
    assert calls == [True] * n + [False] * R.SMALL_VIT["vision_layers"]


def test_empty_batches():
    model = CLIP(**R.SMALL_VIT, seed=0)
    with jt.no_grad():
        assert model.encode_text(np.zeros((0, 77), np.int64)).shape == (0, 64)
        assert model.encode_image(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 64)
