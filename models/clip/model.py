"""OpenAI CLIP in Jittor, OpenAI's ``clip/model.py`` class for class, parameter names = checkpoint
keys. Differences that leave the result unchanged: docs/CONVERSION.md "The Jittor model"; also
``ln_final`` on the EOT rows only (it is per-token) and the ViT patch convolution as a matmul.
float32 throughout; ``model.float16()`` halves the image tower (LayerNorm and BatchNorm
statistics stay float32, as OpenAI's fp16 models) for GPUs (``python -m bench.fp16``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Union

import numpy as np

from models.clip import attention
from models.clip.config import infer_config, prepare_state_dict
from models.runtime import jittor
from models.weights import WeightsError, load_state

jt = jittor()
nn = jt.nn

# Additive mask value for the causal mask. Jittor compiles kernels with -Ofast (finite math
# only), where -inf is not safe; exp(-1e30 - max) underflows to exactly 0 all the same.
_MASKED = -1e30


class _Init:
    """Seeded initialiser of one model, drawn in numpy (Jittor compiles a kernel per fill
    constant); ``enabled=False``: lazy zeros, never computed, for weights loaded right after."""

    def __init__(self, seed: Optional[int] = None, enabled: bool = True):
        self.rng = np.random.default_rng(seed)
        self.enabled = enabled

    def normal(self, shape, std: float) -> jt.Var:
        if not self.enabled:
            return jt.zeros(shape, "float32")
        return jt.array(self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def uniform(self, shape, bound: float) -> jt.Var:
        if not self.enabled:
            return jt.zeros(shape, "float32")
        return jt.array(self.rng.uniform(-bound, bound, shape).astype(np.float32))

    def const(self, shape, value: float) -> jt.Var:
        if not self.enabled:
            return jt.zeros(shape, "float32")
        return jt.array(np.full(shape, value, np.float32))


def _linear(x: jt.Var, weight: jt.Var, bias: Optional[jt.Var] = None) -> jt.Var:
    """x @ weight.T + bias over the last axis; Jittor lowers it to one 2-D MKL matmul."""
    y = nn.matmul_transpose(x, weight)
    return y if bias is None else y + bias


class Linear(jt.Module):
    """torch.nn.Linear's parameters (``weight`` [out, in], ``bias``) and default init."""

    def __init__(self, d_in: int, d_out: int, init: _Init, bias: bool = True):
        bound = 1.0 / math.sqrt(d_in)
        self.weight = init.uniform((d_out, d_in), bound)
        self.bias = init.uniform((d_out,), bound) if bias else None

    def execute(self, x: jt.Var) -> jt.Var:
        return _linear(x, self.weight, self.bias)


class Conv2d(jt.Module):
    """Bias-free convolution with torch's weight layout [out, in, k, k] and default init."""

    def __init__(
        self, c_in: int, c_out: int, k: int, init: _Init, stride: int = 1, padding: int = 0
    ):
        self.weight = init.uniform((c_out, c_in, k, k), 1.0 / math.sqrt(c_in * k * k))
        self.stride = stride
        self.padding = padding

    def execute(self, x: jt.Var) -> jt.Var:
        return nn.conv2d(x, self.weight, None, self.stride, self.padding)


class BatchNorm2d(jt.Module):
    """BatchNorm with frozen running statistics (torch's names: weight, bias, running_*)."""

    def __init__(self, c: int, init: _Init, eps: float = 1e-5):
        self.weight = init.const((c,), 1.0)
        self.bias = init.const((c,), 0.0)
        self.running_mean = init.const((c,), 0.0)
        self.running_var = init.const((c,), 1.0)
        self.eps = eps

    def execute(self, x: jt.Var) -> jt.Var:
        # Scale and shift per channel first: the image-sized work is one fused multiply-add.
        w, b, mean, var = self.weight, self.bias, self.running_mean, self.running_var
        if x.dtype != "float32":  # half precision: the C statistics in float32, as OpenAI's
            w, b, mean, var = (v.float32() for v in (w, b, mean, var))  # fp32 BatchNorm
        scale = w / jt.sqrt(var + self.eps)
        shift = b - mean * scale
        if x.dtype != "float32":
            scale, shift = scale.cast(x.dtype), shift.cast(x.dtype)
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _relu(x: jt.Var) -> jt.Var:
    return jt.maximum(x, 0.0)


def _avgpool(x: jt.Var, k: int) -> jt.Var:
    """torch.nn.AvgPool2d(k): kernel = stride = k, no padding, floor of odd sizes."""
    if k == 1:
        return x
    n, c, h, w = x.shape
    h2, w2 = h // k, w // k
    if h2 * k != h or w2 * k != w:
        x = x[:, :, : h2 * k, : w2 * k]
    return x.reshape(n, c, h2, k, w2, k).mean(dims=(3, 5))


class Bottleneck(jt.Module):
    """OpenAI's anti-aliased bottleneck: stride by an average pool after conv2 (and shortcut)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, init: _Init, stride: int = 1):
        out = planes * self.expansion
        self.conv1 = Conv2d(inplanes, planes, 1, init)
        self.bn1 = BatchNorm2d(planes, init)
        self.conv2 = Conv2d(planes, planes, 3, init, padding=1)
        self.bn2 = BatchNorm2d(planes, init)
        self.conv3 = Conv2d(planes, out, 1, init)
        self.bn3 = BatchNorm2d(out, init)
        self.stride = stride
        self.downsample = None
        if stride > 1 or inplanes != out:
            # Keys "downsample.0" (conv) and "downsample.1" (bn); OpenAI's "-1" is the pool.
            self.downsample = nn.Sequential(Conv2d(inplanes, out, 1, init), BatchNorm2d(out, init))

    def execute(self, x: jt.Var) -> jt.Var:
        out = _relu(self.bn1(self.conv1(x)))
        out = _relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(_avgpool(out, self.stride)))
        identity = x
        if self.downsample is not None:
            identity = self.downsample(_avgpool(x, self.stride))
        return _relu(out + identity)


class AttentionPool2d(jt.Module):
    """Multi-head attention of the mean feature (query) over [mean, all positions] (keys)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int, init):
        self.positional_embedding = init.normal((spacial_dim**2 + 1, embed_dim), embed_dim**-0.5)
        self.k_proj = Linear(embed_dim, embed_dim, init)
        self.q_proj = Linear(embed_dim, embed_dim, init)
        self.v_proj = Linear(embed_dim, embed_dim, init)
        self.c_proj = Linear(embed_dim, output_dim or embed_dim, init)
        self.num_heads = num_heads

    def execute(self, x: jt.Var) -> jt.Var:
        n, c = x.shape[0], x.shape[1]
        x = x.reshape(n, c, -1).transpose(0, 2, 1)  # [N, HW, C]
        x = jt.concat([x.mean(dim=1, keepdims=True), x], dim=1) + self.positional_embedding
        h = self.num_heads
        hd = c // h
        # Only the mean token is a query, so q is [N, 1, C]; keys/values cover all positions.
        q = (self.q_proj(x[:, 0]) * (hd**-0.5)).reshape(n, 1, h, hd)
        k = self.k_proj(x).reshape(n, -1, h, hd)  # [N, L, H, hd]
        v = self.v_proj(x).reshape(n, -1, h, hd)
        att = nn.softmax((q * k).sum(-1), dim=1)  # [N, L, H]
        out = (att.unsqueeze(-1) * v).sum(1).reshape(n, c)  # [N, C]
        return self.c_proj(out)


class ModifiedResNet(jt.Module):
    """OpenAI's ResNet: 3-conv stem with an average pool, anti-aliased strides, attention pool."""

    def __init__(
        self, layers, output_dim: int, heads: int, input_resolution: int, width: int, init
    ):
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.conv1 = Conv2d(3, width // 2, 3, init, stride=2, padding=1)
        self.bn1 = BatchNorm2d(width // 2, init)
        self.conv2 = Conv2d(width // 2, width // 2, 3, init, padding=1)
        self.bn2 = BatchNorm2d(width // 2, init)
        self.conv3 = Conv2d(width // 2, width, 3, init, padding=1)
        self.bn3 = BatchNorm2d(width, init)
        self._inplanes = width  # mutable during construction, as in OpenAI's code
        self.layer1 = self._make_layer(width, layers[0], init)
        self.layer2 = self._make_layer(width * 2, layers[1], init, stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], init, stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], init, stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(input_resolution // 32, embed_dim, heads, output_dim, init)

    def _make_layer(self, planes: int, blocks: int, init: _Init, stride: int = 1):
        layers = [Bottleneck(self._inplanes, planes, init, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes, init) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def execute(self, x: jt.Var) -> jt.Var:
        x = _relu(self.bn1(self.conv1(x)))
        x = _relu(self.bn2(self.conv2(x)))
        x = _relu(self.bn3(self.conv3(x)))
        x = _avgpool(x, 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class LayerNorm(jt.Module):
    """LayerNorm over the last axis, in float32 also for half input (as OpenAI's subclass)."""

    def __init__(self, d: int, init: _Init, eps: float = 1e-5):
        self.weight = init.const((d,), 1.0)
        self.bias = init.const((d,), 0.0)
        self.eps = eps

    def execute(self, x: jt.Var) -> jt.Var:
        dtype = x.dtype
        if dtype != "float32":
            x = x.float32()
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(-1, keepdims=True)  # biased, as torch
        out = xc * jt.rsqrt(var + self.eps) * self.weight + self.bias
        return out if dtype == "float32" else out.cast(dtype)


class Embedding(jt.Module):
    """Token embedding table ``weight`` [vocab, width] (OpenAI's init: normal, std 0.02)."""

    def __init__(self, num: int, dim: int, init: _Init):
        self.weight = init.normal((num, dim), 0.02)


def quick_gelu(x: jt.Var) -> jt.Var:
    """OpenAI's QuickGELU: x * sigmoid(1.702 x)."""
    return x * jt.sigmoid(1.702 * x)


class MultiheadAttention(jt.Module):
    """Self-attention, torch.nn.MultiheadAttention's parameters; models.clip.attention does it."""

    def __init__(self, d_model: int, n_head: int, init: _Init):
        # torch's MHA init: xavier-uniform in_proj, zero biases, default Linear out_proj weight.
        self.in_proj_weight = init.uniform((3 * d_model, d_model), math.sqrt(6.0 / (4 * d_model)))
        self.in_proj_bias = init.const((3 * d_model,), 0.0)
        self.out_proj = Linear(d_model, d_model, init)
        self.out_proj.bias = init.const((d_model,), 0.0)
        self.n_head = n_head

    def execute(self, x: jt.Var, mask: Optional[jt.Var] = None) -> jt.Var:
        """x [N, L, D]; ``mask`` is the additive causal mask [L, L] or None."""
        n, length, d = x.shape
        h = self.n_head
        qkv = _linear(x, self.in_proj_weight, self.in_proj_bias).reshape(n, length, 3, h, d // h)
        if attention.use_fused() and qkv.dtype == "float32":
            out = attention.fused_attention(qkv, causal=mask is not None)
        else:
            out = attention.matmul_attention(qkv, mask)
        return self.out_proj(out.reshape(n, length, d))


class MLP(jt.Module):
    """c_fc -> QuickGELU -> c_proj (OpenAI's ``mlp`` Sequential keys)."""

    def __init__(self, d_model: int, init: _Init):
        self.c_fc = Linear(d_model, d_model * 4, init)
        self.c_proj = Linear(d_model * 4, d_model, init)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.c_proj(quick_gelu(self.c_fc(x)))


class ResidualAttentionBlock(jt.Module):
    """Pre-LN transformer block."""

    def __init__(self, d_model: int, n_head: int, init: _Init):
        self.attn = MultiheadAttention(d_model, n_head, init)
        self.ln_1 = LayerNorm(d_model, init)
        self.mlp = MLP(d_model, init)
        self.ln_2 = LayerNorm(d_model, init)

    def execute(self, x: jt.Var, mask: Optional[jt.Var] = None) -> jt.Var:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(jt.Module):
    """Residual attention blocks on [N, L, D]; the causal mask of a text's context is built once."""

    def __init__(
        self, width: int, layers: int, heads: int, init: _Init, causal_context: Optional[int] = None
    ):
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, init) for _ in range(layers)]
        )
        self._mask = None  # leading underscore: not a parameter
        if causal_context:
            mask = np.triu(np.full((causal_context, causal_context), _MASKED, np.float32), 1)
            self._mask = jt.array(mask).stop_grad()

    def execute(self, x: jt.Var) -> jt.Var:
        length = x.shape[1]
        mask = None if self._mask is None else self._mask[:length, :length]
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(jt.Module):
    """OpenAI's ViT: patch embedding, class token, pre/post LayerNorm, projection."""

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, init):
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.patch_size = patch_size
        self.conv1 = Conv2d(3, width, patch_size, init, stride=patch_size)
        scale = width**-0.5
        self.class_embedding = init.normal((width,), scale)
        grid = input_resolution // patch_size
        self.positional_embedding = init.normal((grid**2 + 1, width), scale)
        self.ln_pre = LayerNorm(width, init)
        self.transformer = Transformer(width, layers, heads, init)
        self.ln_post = LayerNorm(width, init)
        self.proj = init.normal((width, output_dim), scale)

    def execute(self, x: jt.Var) -> jt.Var:
        n = x.shape[0]
        p = self.patch_size
        g = self.input_resolution // p
        width = self.class_embedding.shape[0]
        # Kernel = stride = patch: a matmul of flattened patches, (channel, row, column) order.
        patches = x.reshape(n, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n * g * g, -1)
        x = _linear(patches, self.conv1.weight.reshape(width, -1)).reshape(n, g * g, width)
        cls = self.class_embedding.reshape(1, 1, width).broadcast((n, 1, width))
        x = jt.concat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(jt.Module):
    """OpenAI's CLIP. ``vision_layers`` is a 4-tuple for ModifiedResNet, an int for a ViT."""

    def __init__(
        self,
        embed_dim: int,
        image_resolution: int,
        vision_layers: Union[int, tuple, list],
        vision_width: int,
        vision_patch_size: Optional[int],
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
        *,
        seed: Optional[int] = None,
        init: bool = True,
    ):
        """OpenAI-like random init from ``seed``; ``init=False``: zeros, to load into."""
        ini = _Init(seed, init)
        self.context_length = context_length
        self.embed_dim = embed_dim
        if isinstance(vision_layers, (tuple, list)):
            vision_heads = vision_width * 32 // 64
            self.visual = ModifiedResNet(
                vision_layers, embed_dim, vision_heads, image_resolution, vision_width, ini
            )
        else:
            self.visual = VisionTransformer(
                image_resolution,
                vision_patch_size,
                vision_width,
                vision_layers,
                vision_width // 64,
                embed_dim,
                ini,
            )
        self.transformer = Transformer(
            transformer_width, transformer_layers, transformer_heads, ini, context_length
        )
        self.vocab_size = vocab_size
        self.token_embedding = Embedding(vocab_size, transformer_width, ini)
        self.positional_embedding = ini.normal((context_length, transformer_width), 0.01)
        self.ln_final = LayerNorm(transformer_width, ini)
        self.text_projection = ini.normal((transformer_width, embed_dim), transformer_width**-0.5)
        self.logit_scale = ini.const((), math.log(1 / 0.07))
        self._openai_init(ini)
        self.trim_context = True

    def _openai_init(self, ini: _Init) -> None:
        """The overrides of OpenAI's initialize_parameters."""
        if not ini.enabled:
            return
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.weight.shape[1] ** -0.5
            for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                lin.weight = ini.normal(lin.weight.shape, std)
            visual = self.visual
            for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
                for block in layer:
                    block.bn3.weight = ini.const(block.bn3.weight.shape, 0.0)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            block.attn.in_proj_weight = ini.normal((3 * width, width), attn_std)
            block.attn.out_proj.weight = ini.normal((width, width), proj_std)
            block.mlp.c_fc.weight = ini.normal((4 * width, width), fc_std)
            block.mlp.c_proj.weight = ini.normal((width, 4 * width), proj_std)

    @property
    def dtype(self) -> str:
        """The image tower's weight type: "float32", or "float16" after ``model.float16()``."""
        return str(self.visual.conv1.weight.dtype)

    def encode_image(self, image: Union[np.ndarray, jt.Var]) -> jt.Var:
        """Image features [N, embed_dim] (not normalised, the model's dtype) of [N, 3, R, R]."""
        if not isinstance(image, jt.Var):
            image = jt.array(np.ascontiguousarray(image, dtype=self.dtype))
        elif image.dtype != self.dtype:
            image = image.cast(self.dtype)
        r = self.visual.input_resolution
        if image.ndim != 4 or tuple(image.shape[1:]) != (3, r, r):
            raise ValueError(
                f"encode_image expects [N, 3, {r}, {r}] images, got {list(image.shape)}"
            )
        if image.shape[0] == 0:
            return jt.zeros((0, self.embed_dim), self.dtype)
        return self.visual(image)

    def encode_text(self, text: Union[np.ndarray, jt.Var]) -> jt.Var:
        """Text features [N, embed_dim] (not normalised) at each row's EOT (largest) token id."""
        tokens = text.numpy() if isinstance(text, jt.Var) else np.asarray(text)
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"encode_text expects token ids [N, <= {self.context_length}], got {tokens.shape}"
            )
        if tokens.shape[0] == 0:
            return jt.zeros((0, self.embed_dim), "float32")
        eot = tokens.argmax(-1)
        if self.trim_context:
            # Causal attention: positions after the last EOT never reach any EOT feature.
            tokens = tokens[:, : int(eot.max()) + 1]
        n, n_ctx = tokens.shape
        x = self.token_embedding.weight[jt.array(tokens.astype(np.int32))]
        x = x + self.positional_embedding[:n_ctx]
        x = self.transformer(x)
        x = x[jt.arange(n), jt.array(eot.astype(np.int32))]  # [N, D]
        return self.ln_final(x) @ self.text_projection

    def execute(self, image, text) -> tuple[jt.Var, jt.Var]:
        """(logits_per_image [N_img, N_txt], logits_per_text): scaled cosine similarities."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=-1, keepdims=True)
        text_features = text_features / text_features.norm(dim=-1, keepdims=True)
        logits_per_image = self.logit_scale.exp() * (image_features @ text_features.transpose())
        return logits_per_image, logits_per_image.transpose()


def build_model(
    state: Union[Mapping[str, Any], tuple[Mapping[str, Any], Mapping[str, Any]]],
    source: str = "state dict",
) -> CLIP:
    """A CLIP in eval mode (strict) from a state dict or a converted file's (config, tensors)."""
    if isinstance(state, tuple):
        config, tensors = state
    else:
        tensors = prepare_state_dict(state)
        config = infer_config(tensors)
    try:
        model = CLIP(
            config["embed_dim"],
            config["image_resolution"],
            config["vision_layers"],
            config["vision_width"],
            config["vision_patch_size"],
            config["context_length"],
            config["vocab_size"],
            config["transformer_width"],
            config["transformer_heads"],
            config["transformer_layers"],
            init=False,
        )
    except KeyError as e:
        raise WeightsError(f"{source}: CLIP config lacks {e.args[0]!r}") from e
    load_state(model, tensors, source)
    model.eval()
    return model
