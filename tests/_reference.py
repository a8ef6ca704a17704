"""Reference implementations for the tests and the benchmarks (``bench/``): OpenAI's own CLIP code
(clip-anytorch wheel, loaded by file path), transformers' ConvNextV2 on official-layout weights,
and torch restatements of the official few-shot training loops.

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

from fewshot._batches import epoch_batches
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


# --- ConvNeXt-V2: transformers' implementation on official-layout weights -------------------


def official_to_hf(sd) -> dict[str, torch.Tensor]:
    """Official ConvNeXt-V2 key names -> transformers' ConvNextV2ForImageClassification names."""
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if key.startswith("downsample_layers.0."):  # stem: conv then channels-first LN
            name = "convnextv2.embeddings." + ("patch_embeddings", "layernorm")[int(p[2])]
            name += "." + p[3]
        elif key.startswith("downsample_layers."):
            name = f"convnextv2.encoder.stages.{p[1]}.downsampling_layer.{p[2]}.{p[3]}"
        elif key.startswith("stages."):
            module = {"norm": "layernorm"}.get(p[3], p[3])
            leaf = {"gamma": "weight", "beta": "bias"}.get(p[4], p[4])  # GRN, both [1,1,1,C]
            name = f"convnextv2.encoder.stages.{p[1]}.layers.{p[2]}.{module}.{leaf}"
        elif key.startswith("norm."):
            name = "convnextv2.layernorm." + p[1]
        else:
            name = "classifier." + p[1]
        out[name] = torch.from_numpy(np.array(value, np.float32, copy=True))
    return out


def hf_convnextv2(config, sd):
    """transformers' ConvNextV2ForImageClassification (eval mode) holding the official-layout
    weights ``sd`` of architecture ``config`` (depths, dims, num_classes)."""
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    hc = ConvNextV2Config(
        depths=list(config["depths"]),
        hidden_sizes=list(config["dims"]),
        num_stages=len(config["dims"]),
        num_labels=config["num_classes"],
        layer_norm_eps=1e-6,  # the official final norm; transformers defaults to 1e-12
        hidden_act="gelu",
    )
    model = ConvNextV2ForImageClassification(hc).eval()
    model.load_state_dict(official_to_hf(sd), strict=True)
    return model


# --- torch restatements of the official few-shot loops (float32) ----------------------------

F_ = torch.nn.functional


def torch_inmap(X, T, iters=2000, tau_t=0.01, it_s=20, lr=10.0, tau_i=0.04, alpha=0.6):
    """InMaP's main.py (gamma 0): Sinkhorn pseudo-labels, hard above alpha, proxy descent."""
    n, c = X.shape[0], T.shape[1]
    P = F_.softmax(X @ T / tau_t, dim=1) / n
    for _ in range(it_s):
        P = P / P.sum(0, keepdim=True) / c
        P = P / P.sum(1, keepdim=True) / n
    Y = P * n
    val, idx = Y.max(1)
    mask = val > alpha
    Y[mask] = 0
    Y[mask, idx[mask]] = 1
    return _torch_proxies(X, T, Y, iters, lr, tau_i, normalize=True, halve_first=False)


def _torch_proxies(X, W, Y, iters, lr, tau_i, normalize, halve_first):
    n, base, pre = X.shape[0], X.T @ Y, (-1.0 if halve_first else float("inf"))
    for _ in range(iters):
        G = X.T @ F_.softmax(X @ W / tau_i, dim=1) - base
        norm = torch.norm(G)
        if norm > pre:
            lr /= 2.0
        pre = norm
        W = W - (lr / (n * tau_i)) * G
        if normalize:
            W = F_.normalize(W, dim=0)
    return W


def torch_inmap_challenge(X, T, tau_t=0.01, it_s=100, lr=10.0, iters=20):
    """The challenge solution's Inmap() (fewshot.inmap.inmap_challenge's spec)."""
    n, c = X.shape[0], T.shape[1]
    Y0 = F_.softmax(X @ F_.softmax(T, dim=1) / tau_t, dim=1)
    W1 = _torch_proxies(X, T, Y0, iters, lr, 1.0, normalize=False, halve_first=True)
    P = F_.softmax(X @ W1 / tau_t, dim=1) / n
    for _ in range(it_s):
        P = P / P.sum(0, keepdim=True) / c
        P = P / P.sum(1, keepdim=True) / n
    return _torch_proxies(X, W1, P * n, iters, lr, 1.0, normalize=False, halve_first=True)


def torch_lpp(
    F, y, T, epochs, val=None, learn_alpha=True, accumulate=True, cosine=False, lrs=None,
    b0=None, strict=False,
):  # fmt: skip
    """The official loop (float32, zero bias); returns (W, b, alpha, best_epoch). ``lrs``: the
    rate of every epoch as a fraction of lr_W (another scheduler); ``b0``: the initial bias;
    ``strict``: the earlier of equally good epochs is kept (the challenge solution's ``>``)."""
    F, T = torch.tensor(F), torch.tensor(T)
    y = torch.tensor(y)
    N, C = F.shape[0], T.shape[1]
    oh = F_.one_hot(y, C).float()
    FT = F @ T
    W = (oh.T @ F).clone().requires_grad_(True)
    b = (torch.zeros(C) if b0 is None else torch.tensor(b0)).requires_grad_(True)
    alpha0 = 250 * ((oh * FT).sum(0) / oh.sum(0)).mean()
    alpha = (alpha0 * torch.ones(1, C)).requires_grad_(True)
    lr_alpha = N / (4 * (FT**2).sum(0).max())
    lr_w = 4 * N / np.linalg.eigvalsh((F.T @ F).double().numpy())[-1]
    opt = torch.optim.SGD([W, b], lr_w, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if cosine else None
    best, snap = -1.0, None
    for epoch in range(epochs):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lr_w * lrs[epoch]
        logits = F @ W.T + b + torch.ones(N, 1) @ alpha * FT
        loss = F_.cross_entropy(logits, y)
        opt.zero_grad()
        if not accumulate and alpha.grad is not None:
            alpha.grad = None
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if learn_alpha and (epoch + 1) % 10 == 0:
            alpha.data -= lr_alpha * alpha.grad.data
        if val is not None:
            with torch.no_grad():
                Fv = torch.tensor(val[0])
                lv = Fv @ W.T + b + alpha * (Fv @ T)
                acc = (lv.argmax(1).numpy() == val[1]).mean()
            if acc > best or (acc == best and not strict):
                best, snap = (
                    acc,
                    (W.detach().clone(), b.detach().clone(), alpha.detach().clone(), epoch),
                )
    if snap is None:
        snap = (W.detach(), b.detach(), alpha.detach(), epochs - 1)
    W, b, alpha, e = snap
    return W.numpy(), b.numpy(), alpha.numpy()[0], e


def torch_tip_f(F, y, T, K0, L, epochs, batch, beta, alpha, seed):
    """Official Tip-Adapter-F training (no selection), fed our seeded batch order."""
    F, T, L = torch.tensor(F), torch.tensor(T), torch.tensor(L)
    y = torch.tensor(y)
    adapter = torch.nn.Linear(K0.shape[1], K0.shape[0], bias=False)
    adapter.weight = torch.nn.Parameter(torch.tensor(K0))
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3, eps=1e-4)
    steps = -(-F.shape[0] // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx, w in epoch_batches(F.shape[0], batch, rng):
            real = torch.tensor(idx[w > 0].astype(np.int64))
            f = F[real]
            cache = (-(beta - beta * adapter(f))).exp() @ L
            loss = F_.cross_entropy(100 * f @ T + alpha * cache, y[real])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return adapter.weight.detach().numpy()


def torch_amu(xc, xa, y, T, epochs, batch, alpha, lam, kind, seed):
    """Official AMU_Model forward + loss, AdamW(wd 0.01, eps 1e-4), cosine per step."""
    xc, xa, T, y = torch.tensor(xc), torch.tensor(xa), torch.tensor(T), torch.tensor(y)
    fa = xa / xa.norm(dim=-1, keepdim=True)
    C = T.shape[1]
    W0 = torch.zeros(xa.shape[1], C)
    for i in range(len(y)):
        W0[:, y[i]] += fa[i]
    fc = torch.nn.Linear(xa.shape[1], C, bias=False)
    fc.weight = torch.nn.Parameter((W0 / (len(y) / C)).t())
    opt = torch.optim.AdamW(fc.parameters(), weight_decay=0.01, lr=1e-3, eps=1e-4)
    steps = -(-len(y) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx, w in epoch_batches(len(y), batch, rng):
            real = torch.tensor(idx[w > 0].astype(np.int64))
            c, a = xc[real], xa[real]
            c, a = c / c.norm(dim=-1, keepdim=True), a / a.norm(dim=-1, keepdim=True)
            clip_logits = 100.0 * c @ T
            aux = fc(a)
            aux = (aux - aux.mean(1, keepdim=True)) / aux.std(1, keepdim=True)
            if kind == "moment":
                p = clip_logits.softmax(-1)
                z = (p - p.mean(-1, keepdim=True)) / p.std(-1, keepdim=True)
                factor = 1 / (((z**4).mean(-1, keepdim=True) / 250) ** 0.4)
            else:
                factor = torch.tensor(1.0)
            logits = clip_logits + factor * aux * alpha
            ce = F_.cross_entropy
            loss = lam * ce(logits, y[real]) + (1 - lam) * ce(aux, y[real])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return fc.weight.detach().numpy()


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
