"""OpenAI's own CLIP code (clip-anytorch wheel) for tests, loaded by file path.

``import clip`` fails here (the package imports torchvision), so ``clip/model.py`` and
``clip/simple_tokenizer.py`` are loaded as standalone modules. The preprocessing reference
follows torchvision's PIL code path (Resize of the short side, CenterCrop, ToTensor, Normalize)
with plain PIL and numpy calls, since torchvision is not installed either.

Import torch before Jittor in a process that uses both: import this module first.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (import order: torch before Jittor)

from models.clip.config import FULL_SIZE_CLIP

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def require_slow(request) -> None:
    """Skip a ``slow``-marked test unless the run selects slow tests (``-m slow``): the
    project's pytest configuration runs every test by default."""
    import pytest

    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full-size run: select with -m slow")


def clip_package_dir() -> Path:
    """Directory of the installed clip-anytorch package (without importing it)."""
    for entry in sys.path:
        d = Path(entry) / "clip"
        if (d / "model.py").is_file() and (d / "simple_tokenizer.py").is_file():
            return d
    raise ImportError("clip-anytorch is not installed (scripts/setup.sh --dev installs it)")


def _load(name: str, filename: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, clip_package_dir() / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def openai_model():
    """OpenAI's ``clip/model.py`` as a module (CLIP, build_model, convert_weights, ...)."""
    return _load("_openai_clip_model", "model.py")


@functools.lru_cache(maxsize=1)
def openai_tokenizer():
    """OpenAI's ``SimpleTokenizer`` with the wheel's vocabulary (one shared instance)."""
    return _load("_openai_simple_tokenizer", "simple_tokenizer.py").SimpleTokenizer()


def openai_tokenize(tok, texts, context_length: int = 77, truncate: bool = False) -> np.ndarray:
    """OpenAI's ``clip.tokenize`` (clip/clip.py), restated on top of its SimpleTokenizer."""
    if isinstance(texts, str):
        texts = [texts]
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    result = np.zeros((len(texts), context_length), np.int64)
    for i, text in enumerate(texts):
        tokens = [sot] + tok.encode(text) + [eot]
        if len(tokens) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            tokens = tokens[:context_length]
            tokens[-1] = eot
        result[i, : len(tokens)] = tokens
    return result


# Small architectures with OpenAI's shapes (widths are multiples of 64: heads = width // 64).
SMALL_VIT = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=2,
    vision_width=128,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=2,
)
SMALL_RN = dict(
    embed_dim=64,
    image_resolution=64,
    vision_layers=(1, 2, 1, 1),
    vision_width=64,
    vision_patch_size=None,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=1,
)
# Full size (tests marked slow).
VIT_B_32 = FULL_SIZE_CLIP["ViT-B/32"]
RN101 = FULL_SIZE_CLIP["RN101"]


def random_openai_clip(arch: dict, seed: int = 0):
    """OpenAI's CLIP with random weights in float32, eval mode.

    Its own init leaves BatchNorm at identity statistics and zeroes every bottleneck's last
    BatchNorm; those are randomised here too, so that a wrong BatchNorm or residual path shows.
    """
    torch.manual_seed(seed)
    model = openai_model().CLIP(**arch).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.bias.copy_(0.1 * torch.randn(c, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                module.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if isinstance(module, (torch.nn.LayerNorm,)):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            if isinstance(module, torch.nn.MultiheadAttention):
                module.in_proj_bias.copy_(
                    0.02 * torch.randn(module.in_proj_bias.shape, generator=g)
                )
        model.logit_scale.fill_(float(np.log(100.0)))
    return model


def fp16_roundtrip(model) -> None:
    """Round the weights OpenAI's convert_weights makes fp16 through fp16, in place: so a
    float32 reference sees exactly the values an fp16 archive holds."""
    with torch.no_grad():
        ref = openai_model()
        shadow = {k: v.clone() for k, v in model.state_dict().items()}
        ref.convert_weights(model)
        for k, v in model.state_dict().items():
            if v.dtype == torch.float16:
                shadow[k] = v.float()
        model.float()
        model.load_state_dict(shadow)


def reference_features(model, images: np.ndarray, tokens: np.ndarray):
    """L2-normalised image and text features of OpenAI's model, float32, as numpy."""
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images)).float()
        txt = model.encode_text(torch.from_numpy(tokens)).float()
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return img.numpy(), txt.numpy()


# --- torchvision semantics with plain PIL (reference for models/clip/preprocess.py) --------


def torchvision_clip_preprocess(img, n_px: int) -> np.ndarray:
    """OpenAI's _transform(n_px) as torchvision computes it on a PIL image.

    Resize(n_px, BICUBIC) (torchvision.transforms.functional.resize, PIL path): the short side
    becomes n_px, the long side int(n_px * long / short); nothing happens when the short side
    already is n_px. CenterCrop(n_px): top = int(round((h - n_px) / 2.0)), same for left (its
    padding branch needs an image smaller than the crop, impossible after that resize).
    convert("RGB"), then ToTensor and Normalize with torch's ops, as torchvision runs them.
    """
    from PIL import Image

    w, h = img.size
    if w <= h and w == n_px or h <= w and h == n_px:
        pass
    elif w < h:
        img = img.resize((n_px, int(n_px * h / w)), Image.BICUBIC)
    else:
        img = img.resize((int(n_px * w / h), n_px), Image.BICUBIC)
    w, h = img.size
    assert w >= n_px and h >= n_px
    top = int(round((h - n_px) / 2.0))
    left = int(round((w - n_px) / 2.0))
    img = img.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    # ToTensor: bytes -> uint8 HWC -> CHW -> float / 255
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    t = t.view(img.size[1], img.size[0], 3).permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return t.sub_(mean).div_(std).numpy()


def jittor_scheduler_rates(
    epochs: int, t_max: int, eta_min: float = 0.0, base: float = 1.0
) -> list[float]:
    """The rate of every epoch of a loop that steps Jittor's own CosineAnnealingLR
    after each epoch, as the challenge solution's few_lp.py and train_dog.py do."""
    from jittor.lr_scheduler import CosineAnnealingLR

    class Optimizer:
        lr, param_groups = base, [{}]

    opt = Optimizer()
    sched = CosineAnnealingLR(opt, t_max, eta_min)
    rates = []
    for _ in range(epochs):
        rates.append(opt.lr)
        sched.step()
    return rates
