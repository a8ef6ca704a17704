"""Jittor CLIP against OpenAI's own model code (clip-anytorch), random weights, CPU.

Small ViT and ModifiedResNet architectures keep compiles and runs short; the full-size
ViT-B/32 and RN101 comparisons are marked slow.
"""

from __future__ import annotations

import _reference as R  # first: torch before Jittor
import numpy as np
import pytest
import torch

from models.clip import tokenize
from models.clip.config import infer_config
from models.runtime import jittor
from models.weights import WeightsError

jt = jittor("cpu")
from models.clip.model import CLIP, build_model  # noqa: E402

TOL = 1e-5
PROMPTS = [
    "a photo of a dog.",
    "a blurry photo of a Shiba Inu, a type of dog",
    "x",
    "an extremely long caption " * 20,  # truncated: the EOT token sits at the last position
]


def _l2(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=["vit", "rn"])
def pair(request):
    """(OpenAI reference model, Jittor model with the same weights, images, tokens)."""
    arch = R.SMALL_VIT if request.param == "vit" else R.SMALL_RN
    ref = R.random_openai_clip(arch, seed=3)
    model = build_model(_state(ref))
    r = arch["image_resolution"]
    images = np.random.default_rng(0).standard_normal((3, 3, r, r)).astype(np.float32)
    tokens = tokenize(PROMPTS, truncate=True)
    return ref, model, images, tokens


def test_features_equal_openai_under_no_grad(pair):
    ref, model, images, tokens = pair
    want_img, want_txt = R.reference_features(ref, images, tokens)
    with jt.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tokens)
    assert img.shape == (3, model.embed_dim) and txt.shape == (4, model.embed_dim)
    np.testing.assert_allclose(_l2(img.numpy()), want_img, atol=TOL, rtol=0)
    np.testing.assert_allclose(_l2(txt.numpy()), want_txt, atol=TOL, rtol=0)


def test_differentiable_path_and_full_context_equal_openai(pair):
    # Outside no_grad the attention runs as batched matmuls; trim_context=False runs all 77
    # positions like OpenAI: both must give the same features.
    ref, model, images, tokens = pair
    want_img, want_txt = R.reference_features(ref, images, tokens)
    model.trim_context = False
    try:
        txt = model.encode_text(jt.array(tokens)).numpy()
        img = model.encode_image(jt.array(images)).numpy()
    finally:
        model.trim_context = True
    np.testing.assert_allclose(_l2(img), want_img, atol=TOL, rtol=0)
    np.testing.assert_allclose(_l2(txt), want_txt, atol=TOL, rtol=0)


def test_unnormalised_features_and_logits_equal_openai(pair):
    ref, model, images, tokens = pair
    with torch.no_grad():
        want_li, want_lt = ref(torch.from_numpy(images), torch.from_numpy(tokens))
        want_txt = ref.encode_text(torch.from_numpy(tokens)).numpy()
    with jt.no_grad():
        li, lt = model(images, tokens)
        txt = model.encode_text(tokens).numpy()
    np.testing.assert_allclose(txt, want_txt, atol=1e-5, rtol=1e-4)
    # logit scale 100 on cosine similarities
    np.testing.assert_allclose(li.numpy(), want_li.numpy(), atol=100 * TOL, rtol=0)
    np.testing.assert_allclose(lt.numpy(), want_lt.numpy(), atol=100 * TOL, rtol=0)


def test_trimming_only_drops_positions_after_the_last_eot(pair):
    # Padding beyond the last EOT must not change any feature; padding before it would.
    _, model, _, tokens = pair
    short = tokens[:3]  # the three short prompts
    with jt.no_grad():
        a = model.encode_text(short).numpy()
        b = model.encode_text(short[:, : int(short.argmax(-1).max()) + 1]).numpy()
    np.testing.assert_array_equal(a, b)


def test_config_is_inferred_like_openai(pair):
    ref, model, _, _ = pair
    cfg = infer_config(_state(ref))
    arch = R.SMALL_VIT if isinstance(cfg["vision_layers"], int) else R.SMALL_RN
    for key, value in arch.items():
        got = cfg[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (
            list(value) if isinstance(value, tuple) else value
        ), key
    assert model.visual.input_resolution == arch["image_resolution"]
    assert model.context_length == 77 and model.embed_dim == arch["embed_dim"]
    assert cfg["architecture"] == "custom"


def test_parameter_names_and_shapes_are_the_checkpoint_keys():
    for arch in (R.SMALL_VIT, R.SMALL_RN):
        ref = R.openai_model().CLIP(**arch)
        want = {
            k: tuple(v.shape)
            for k, v in ref.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        model = CLIP(**arch, seed=0)
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        want["logit_scale"] = (1,)  # Jittor has no 0-d arrays
        assert got == want


def test_random_init_is_seeded_and_openai_like():
    a = CLIP(**R.SMALL_VIT, seed=5).state_dict()
    b = CLIP(**R.SMALL_VIT, seed=5).state_dict()
    c = CLIP(**R.SMALL_VIT, seed=6).state_dict()
    emb = a["token_embedding.weight"].numpy()
    np.testing.assert_array_equal(emb, b["token_embedding.weight"].numpy())
    assert not np.array_equal(emb, c["token_embedding.weight"].numpy())
    assert abs(emb.std() - 0.02) < 0.002  # OpenAI: normal(std=0.02)
    assert abs(a["positional_embedding"].numpy().std() - 0.01) < 0.002
    np.testing.assert_allclose(a["logit_scale"].numpy(), [np.log(1 / 0.07)], rtol=1e-6)
    width = R.SMALL_VIT["transformer_width"]
    w = a["transformer.resblocks.0.attn.in_proj_weight"].numpy()
    assert abs(w.std() - width**-0.5) < 0.1 * width**-0.5
    rn = CLIP(**R.SMALL_RN, seed=5).state_dict()
    assert not rn["visual.layer1.0.bn3.weight"].numpy().any()  # zero-init residual BN


def test_strict_loading_lists_every_problem():
    ref = R.random_openai_clip(R.SMALL_VIT, seed=1)
    sd = _state(ref)
    sd.pop("ln_final.bias")
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["visual.proj"] = sd["visual.proj"][:, :-1]  # changes embed_dim only for the image side
    with pytest.raises(WeightsError) as err:
        build_model(sd)
    msg = str(err.value)
    assert "missing: ln_final.bias" in msg
    assert "unexpected: extra.weight" in msg
    assert "visual.proj" in msg and "shape" in msg


def test_inputs_are_checked():
    model = CLIP(**R.SMALL_VIT, seed=0)
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        model.encode_image(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(np.zeros((1, 78), np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [R.VIT_B_32, R.RN101], ids=["ViT-B/32", "RN101"])
def test_full_size_architectures_equal_openai(arch, request):
    R.require_slow(request)
    ref = R.random_openai_clip(arch, seed=7)
    model = build_model(_state(ref))
    architecture = infer_config(model.state_dict())["architecture"]
    assert architecture == ("ViT-B/32" if arch is R.VIT_B_32 else "RN101")
    images = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    tokens = tokenize(PROMPTS, truncate=True)
    want_img, want_txt = R.reference_features(ref, images, tokens)
    with jt.no_grad():
        img = model.encode_image(images).numpy()
        txt = model.encode_text(tokens).numpy()
    np.testing.assert_allclose(_l2(img), want_img, atol=TOL, rtol=0)
    np.testing.assert_allclose(_l2(txt), want_txt, atol=TOL, rtol=0)


def _openai_shapes(arch: dict) -> dict[str, torch.Tensor]:
    """The state dict of OpenAI's CLIP(**arch) on the meta device: shapes, no memory."""
    with torch.device("meta"):
        return R.openai_model().CLIP(**arch).state_dict()


RELEASED = {
    "RN50": dict(R.RN101, embed_dim=1024, vision_layers=(3, 4, 6, 3)),
    "RN101": R.RN101,
    "RN50x4": dict(
        R.RN101,
        embed_dim=640,
        image_resolution=288,
        vision_layers=(4, 6, 10, 6),
        vision_width=80,
        transformer_width=640,
        transformer_heads=10,
    ),
    "RN50x16": dict(
        R.RN101,
        embed_dim=768,
        image_resolution=384,
        vision_layers=(6, 8, 18, 8),
        vision_width=96,
        transformer_width=768,
        transformer_heads=12,
    ),
    "ViT-B/32": R.VIT_B_32,
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_config_of_released_architectures(name):
    arch = RELEASED[name]
    cfg = infer_config(_openai_shapes(arch))
    assert cfg["architecture"] == name
    for key, value in arch.items():
        assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key


def _openai_runs(arch: dict) -> bool:
    """Whether OpenAI's CLIP builds with ``arch`` and encodes an image and a text."""
    try:
        model = R.openai_model().CLIP(**arch).eval()
        r = arch["image_resolution"]
        with torch.no_grad():
            model.encode_image(torch.zeros(1, 3, r, r))
            model.encode_text(torch.from_numpy(tokenize("a dog")))
    except (AssertionError, RuntimeError, ValueError, ZeroDivisionError):
        return False
    return True


def _shapes_with(arch: dict, base: dict) -> dict[str, torch.Tensor]:
    """The shapes of a state dict of ``arch``: OpenAI's own where its CLIP builds, else those
    of ``base`` with the tensor that gives the changed width resized (what a file holds)."""
    try:
        return _openai_shapes(arch)
    except (AssertionError, ValueError, ZeroDivisionError):
        pass
    sd = dict(_openai_shapes(base))
    if arch["transformer_width"] != base["transformer_width"]:
        sd["ln_final.weight"] = torch.empty(arch["transformer_width"], device="meta")
    if arch["vision_width"] != base["vision_width"]:
        key = "visual.conv1.weight" if "visual.proj" in sd else "visual.layer1.0.conv1.weight"
        sd[key] = torch.empty(arch["vision_width"], *sd[key].shape[1:], device="meta")
    return sd


@pytest.mark.parametrize(
    "changes",
    [
        dict(vision_width=96),  # ViT: 1 head of 96
        dict(vision_width=129),  # ViT: 2 heads do not split 129
        dict(transformer_width=96, transformer_heads=1),
        dict(transformer_width=32, transformer_heads=0),
        dict(vision_width=66),  # RN: 33 heads of 64
        dict(vision_width=65),  # RN: 32 heads of 65
        dict(vision_width=63),  # RN: 31 heads do not split 63 * 32
    ],
    ids=["vit96", "vit129", "text96", "text32", "rn66", "rn65", "rn63"],
)
def test_accepts_exactly_the_widths_openai_runs(changes, request):
    # OpenAI's build_model derives the heads from the widths (width // 64 for the
    # transformers, width * 32 // 64 for the ResNet attention pool) and accepts any state dict
    # whose model builds; the attention then needs the heads to split its width.
    if request.node.callspec.id.startswith("rn"):
        base = dict(R.SMALL_RN, vision_layers=(1, 1, 1, 1), image_resolution=32)
    else:
        base = R.SMALL_VIT
    arch = dict(base, **changes)
    shapes = _shapes_with(arch, base)
    if _openai_runs(arch):
        cfg = infer_config(shapes)
        assert cfg["vision_width"] == arch["vision_width"]
        assert cfg["transformer_width"] == arch["transformer_width"]
        assert cfg["transformer_heads"] == arch["transformer_heads"]
    else:
        with pytest.raises(ValueError, match="heads"):
            infer_config(shapes)
