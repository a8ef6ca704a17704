"""Multi-head attention softmax(q k^T / sqrt(d) + mask) v over a fused q/k/v projection: a C++
kernel without gradient on the CPU (several times faster there than Jittor's batched matmul, a
broadcast-multiply-reduce kernel), batched matmuls otherwise (docs/CONVERSION.md, "The Jittor
model")."""

from __future__ import annotations

from typing import Optional

from models.runtime import jittor

jt = jittor()

_HEADER = "#include <vector>\n#include <cmath>\n"

# One thread per (sample, head); per query row: scores, a max-subtracted softmax, weighted sum.
_SRC = r"""
@alias(qkv, in0)
@alias(o, out0)
const int N = qkv_shape0, L = qkv_shape1, H = qkv_shape3;
constexpr int D = @HEAD_DIM;
const float scale = @SCALE;
const long long tok = 3LL * H * D;
#pragma omp parallel for collapse(2) schedule(static)
for (int n = 0; n < N; n++)
for (int h = 0; h < H; h++) {
    std::vector<float> p(L);
    const float* base = qkv_p + (long long)n * L * tok + (long long)h * D;
    for (int i = 0; i < L; i++) {
        const float* q = base + i * tok;
        const int jend = @CAUSAL ? i + 1 : L;
        float m = -3.0e38f;
        for (int j = 0; j < jend; j++) {
            const float* k = base + j * tok + (long long)H * D;
            float s = 0.f;
            for (int d = 0; d < D; d++) s += q[d] * k[d];
            s *= scale;
            p[j] = s;
            m = s > m ? s : m;
        }
        float acc[D];
        for (int d = 0; d < D; d++) acc[d] = 0.f;
        float sum = 0.f;
        for (int j = 0; j < jend; j++) {
            const float e = expf(p[j] - m);
            sum += e;
            const float* v = base + j * tok + 2LL * H * D;
            for (int d = 0; d < D; d++) acc[d] += e * v[d];
        }
        const float inv = 1.f / sum;
        float* out = o_p + (((long long)n * L + i) * H + h) * D;
        for (int d = 0; d < D; d++) out[d] = acc[d] * inv;
    }
}
"""


def fused_attention(qkv: jt.Var, causal: bool) -> jt.Var:
    """[N, L, 3, H, d] float32 projections -> [N, L, H, d] attention output (CPU, no grad)."""
    n, length, three, h, d = qkv.shape
    assert three == 3, qkv.shape
    # The head size is a compile-time constant (one kernel per size; 64 in every CLIP).
    src = (
        _SRC.replace("@HEAD_DIM", str(int(d)))
        .replace("@SCALE", f"{float(d) ** -0.5!r}f")
        .replace("@CAUSAL", "true" if causal else "false")
    )
    return jt.code((n, length, h, d), "float32", [qkv], cpu_header=_HEADER, cpu_src=src)


def matmul_attention(qkv: jt.Var, mask: Optional[jt.Var]) -> jt.Var:
    """Differentiable reference path: batched matmuls; ``mask`` is additive [L, L] or None."""
    d = qkv.shape[-1]
    # Jittor folds these slices and transposes into the matmul kernels' indexing.
    q = qkv[:, :, 0].transpose(0, 2, 1, 3) * (d**-0.5)  # [N, H, L, d]
    k = qkv[:, :, 1].transpose(0, 2, 3, 1)  # [N, H, d, L]
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)
    scores = jt.matmul(q, k)
    if mask is not None:
        scores = scores + mask
    return jt.matmul(jt.nn.softmax(scores, dim=-1), v).transpose(0, 2, 1, 3)


def use_fused() -> bool:
    """The fused kernel applies on the CPU when no gradient is recorded."""
    return bool(jt.flags.no_grad) and not jt.flags.use_cuda
