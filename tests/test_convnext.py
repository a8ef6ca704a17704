"""ConvNeXt-V2 in Jittor against the transformers implementation, on random official checkpoints.

The checkpoints are official-format files (``torch.save({'model': state_dict})`` with the keys
of facebookresearch/ConvNeXt-V2) converted by convert.py before loading, as real weights are.
Weights are drawn at unit scale (not the 0.02 init) with non-trivial LayerNorm/GRN parameters so
that every layer moves the logits far more than the tolerance; a sensitivity check makes sure.
"""

from __future__ import annotations

import json
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch  # before Jittor (see docs/CONTRIBUTING.md)
from _reference import hf_convnextv2, official_to_hf
from PIL import Image

import convert as convert_cli
from models import convnext as cx
from models import weights
from models.convert import convert
from models.convnext import model as cxm

jt = cxm.jt
REL_TOL = 1e-4

CONFIGS = {
    "atto": cx.variant_config("atto", num_classes=10),
    # Not a published variant: other widths and a deeper third stage than atto.
    "custom": {"depths": [1, 2, 4, 1], "dims": [24, 48, 96, 192], "num_classes": 7, "in_chans": 3},
}


def strong_state_dict(config, seed: int) -> dict[str, np.ndarray]:
    """Official-layout weights at a scale where every parameter matters."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in cx.param_shapes(config).items():
        if name.endswith(".weight") and len(shape) > 1:
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif name.endswith(".weight"):
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith((".gamma", ".beta")):
            w = 0.3 * rng.standard_normal(shape)
        else:
            w = 0.2 * rng.standard_normal(shape)
        sd[name] = w.astype(np.float32)
    return sd


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


_PAIRS: dict[str, tuple] = {}


def official_checkpoint(sd: dict[str, np.ndarray], path) -> None:
    """What the official training script saves: torch.save({'model': state_dict})."""
    torch.save({"model": OrderedDict((k, torch.from_numpy(v.copy())) for k, v in sd.items())}, path)


def _pair(name: str, tmp_path_factory) -> tuple:
    """(name, config, official sd, Jittor model loaded from the converted file, HF reference)."""
    if name not in _PAIRS:
        config = CONFIGS[name]
        sd = strong_state_dict(config, seed=len(name))
        root = tmp_path_factory.mktemp("cnx")
        official_checkpoint(sd, root / f"convnextv2_{name}.pt")
        summary = convert(root / f"convnextv2_{name}.pt", root / f"{name}.safetensors")
        assert summary["family"] == cx.FAMILY and summary["config"] == cx.infer_config(sd)
        _PAIRS[name] = (
            name,
            config,
            sd,
            cx.load(root / f"{name}.safetensors"),
            hf_convnextv2(config, sd),
        )
    return _PAIRS[name]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    return _pair(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def atto(tmp_path_factory):
    return _pair("atto", tmp_path_factory)


def test_matches_transformers(pair):
    name, config, sd, model, ref = pair
    assert model.config() == {**config, "variant": "atto" if name == "atto" else "custom"}
    rng = np.random.default_rng(0)
    for size in (224, 384):
        x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            out = ref(torch.from_numpy(x))
            pooled = ref.convnextv2(torch.from_numpy(x)).pooler_output.numpy()
        with jt.no_grad():
            feats = model.forward_features(jt.array(x))
            logits = model.forward_head(feats).numpy()
            full = model(jt.array(x)).numpy()
        assert feats.shape == (2, config["dims"][-1])
        assert rel_err(feats.numpy(), pooled) < REL_TOL, size
        assert rel_err(logits, out.logits.numpy()) < REL_TOL, size
        np.testing.assert_allclose(full, logits, rtol=0, atol=1e-6)


def test_odd_feature_maps_match_transformers(atto):
    """280 px (the training crop) gives 35x35 -> 17x17 maps: stride-2 convs drop a row/column."""
    _, _, _, model, ref = atto
    x = np.random.default_rng(1).standard_normal((1, 3, 280, 280)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).logits.numpy()
    with jt.no_grad():
        got = model(jt.array(x)).numpy()
    assert rel_err(got, expected) < REL_TOL


def test_weights_are_strong_enough_to_catch_errors(atto):
    """Zeroing one block's GRN or the final norm's bias must move the reference far past REL_TOL."""
    _, config, sd, _, ref = atto
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype("f"))
    with torch.no_grad():
        base = ref(x).logits.numpy()
        for key in ("stages.3.1.grn.gamma", "stages.0.0.norm.bias", "downsample_layers.2.0.bias"):
            changed = dict(sd, **{key: np.zeros_like(sd[key])})
            other = hf_convnextv2(config, changed)(x).logits.numpy()
            assert rel_err(other, base) > 100 * REL_TOL, key


def test_gradients_match_transformers(atto):
    """The fine-tuning path (last stage + norm + head) gets the reference's gradients."""
    _, _, _, model, ref = atto
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    weight = np.random.default_rng(4).standard_normal((2, 10)).astype(np.float32)
    ref.zero_grad()
    (ref(torch.from_numpy(x)).logits * torch.from_numpy(weight)).sum().backward()
    hf_grads = dict(ref.named_parameters())
    names = {
        "stages.3.1.dwconv.weight": "convnextv2.encoder.stages.3.layers.1.dwconv.weight",
        "stages.3.1.grn.gamma": "convnextv2.encoder.stages.3.layers.1.grn.weight",
        "stages.3.0.pwconv1.weight": "convnextv2.encoder.stages.3.layers.0.pwconv1.weight",
        "norm.weight": "convnextv2.layernorm.weight",
        "head.bias": "classifier.bias",
    }
    own = dict(model.named_parameters())
    model.train()  # Jittor's eval() also stops the parameters' gradients
    try:
        loss = (model(jt.array(x)) * jt.array(weight)).sum()
        grads = [g.numpy() for g in jt.grad(loss, [own[k] for k in names])]
    finally:
        model.eval()
    for (k, hf_name), g in zip(names.items(), grads):
        expected = hf_grads[hf_name].grad.numpy()
        assert rel_err(g, expected) < 1e-3, k


def test_parameter_names_are_the_official_keys():
    config = CONFIGS["custom"]
    model = cx.ConvNeXtV2(config["depths"], config["dims"], config["num_classes"], seed=None)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == cx.param_shapes(config)
    assert "stages.2.3.grn.gamma" in got and got["stages.2.3.grn.gamma"] == (1, 1, 1, 384)


@pytest.mark.parametrize("variant", sorted(cx.VARIANTS))
def test_infer_config_of_every_variant(variant):
    # Shapes only: np.shape() reads .shape, so no huge array is allocated for large/huge.
    shapes = cx.param_shapes(cx.variant_config(variant, num_classes=1000))
    sd = {k: types.SimpleNamespace(shape=s) for k, s in shapes.items()}
    assert cx.matches(sd)
    depths, dims = cx.VARIANTS[variant]
    assert cx.infer_config(sd) == {
        "variant": variant,
        "depths": list(depths),
        "dims": list(dims),
        "num_classes": 1000,
        "in_chans": 3,
    }
    del sd["head.weight"], sd["head.bias"]
    assert cx.infer_config(sd)["num_classes"] == 0


def test_base_has_the_published_size():
    # ConvNeXt-V2-B: 88.7M parameters (official model zoo table).
    n = sum(int(np.prod(s)) for s in cx.param_shapes("base").values())
    assert 88.5e6 < n < 88.9e6


def test_matches_rejects_other_layouts():
    official = cx.random_state_dict(CONFIGS["custom"])
    assert cx.matches(official)
    hf = {k: v.numpy() for k, v in official_to_hf(official).items()}
    assert not cx.matches(hf)
    assert not cx.matches({"visual.conv1.weight": np.zeros((2, 3, 4, 4))})
    with pytest.raises(weights.WeightsError):
        cx.infer_config(hf)


def test_prepare_state_dict_reshapes_grn():
    sd = cx.random_state_dict(CONFIGS["custom"])
    flat = {k: (v.reshape(-1) if ".grn." in k else v) for k, v in sd.items()}
    fixed = cx.prepare_state_dict(flat)
    assert fixed.keys() == sd.keys()
    assert all(fixed[k].shape == v.shape for k, v in sd.items())


def test_random_init_is_the_official_one():
    config = CONFIGS["custom"]
    a = cx.ConvNeXtV2(config["depths"], config["dims"], config["num_classes"], seed=3)
    sd = {k: v.numpy() for k, v in a.state_dict().items()}
    expected = cx.random_state_dict(config, seed=3)
    assert all(np.array_equal(sd[k], expected[k]) for k in expected)
    kernels = np.concatenate([v.ravel() for k, v in sd.items() if v.ndim > 1 and "grn" not in k])
    assert abs(kernels.std() - 0.02) < 0.001 and abs(kernels.mean()) < 0.001
    assert not any(sd[k].any() for k in sd if k.endswith((".bias", ".gamma", ".beta")))
    assert all((sd[k] == 1).all() for k in sd if k.endswith("norm.weight"))
    other = cx.random_state_dict(config, seed=4)
    assert not np.array_equal(other["head.weight"], expected["head.weight"])


def test_load_reports_bad_files(tmp_path):
    config = CONFIGS["custom"]
    sd = cx.random_state_dict(config)
    with pytest.raises(weights.WeightsError, match="not found"):
        cx.load(tmp_path / "missing.safetensors")
    clip_file = weights.save(tmp_path / "c.safetensors", sd, family="clip", config={})
    with pytest.raises(weights.WeightsError, match="'clip' weights"):
        cx.load(clip_file)
    partial = {k: v for k, v in sd.items() if k != "stages.1.1.pwconv2.bias"}
    bad = weights.save(tmp_path / "p.safetensors", partial, family=cx.FAMILY, config=config)
    with pytest.raises(weights.WeightsError, match=r"p\.safetensors.*stages\.1\.1\.pwconv2\.bias"):
        cx.load(bad)
    # A stage without its first block (its width is read there): one line, at conversion too.
    headless = {k: v for k, v in sd.items() if not k.startswith("stages.1.0.")}
    with pytest.raises(weights.WeightsError, match="stage 1 has no block 0"):
        cx.infer_config(headless)
    bad = weights.save(tmp_path / "s.safetensors", headless, family=cx.FAMILY, config=config)
    with pytest.raises(weights.WeightsError, match=r"s\.safetensors.*stage 1 has no block 0"):
        cx.load(bad)
    lying = weights.save(
        tmp_path / "h.safetensors", sd, family=cx.FAMILY, config={**config, "dims": [1, 2, 3, 4]}
    )
    with pytest.raises(weights.WeightsError, match="header says dims"):
        cx.load(lying)


def test_eval_transform_normalises():
    img = Image.new("RGB", (50, 30), (255, 0, 128))
    x = cx.preprocess(64)(img)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    expected = (np.array([1.0, 0.0, 128 / 255]) - cx.IMAGENET_MEAN) / cx.IMAGENET_STD
    np.testing.assert_allclose(x[:, 10, 20], expected, atol=1e-6)


def test_train_transform_crops_flips_and_is_seeded():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))
    t = cx.TrainTransform(resize=32, crop=24)
    full = cx.preprocess(32)(img)  # the same bicubic resize, uncropped
    views = [t(img, np.random.default_rng(s)) for s in range(12)]
    assert all(v.shape == (3, 24, 24) for v in views)
    np.testing.assert_array_equal(views[0], t(img, np.random.default_rng(0)))
    flips = 0
    for v in views:
        hits = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if np.allclose(
                v,
                full[:, top : top + 24, left : left + 24][:, :, ::-1]
                if flip
                else full[:, top : top + 24, left : left + 24],
                atol=1e-6,
            )
        ]
        assert len(hits) == 1  # every view is exactly one window of the resized image
        flips += hits[0][2]
    assert 0 < flips < 12
    assert len({v.tobytes() for v in views}) > 6
    with pytest.raises(ValueError):
        cx.TrainTransform(resize=20, crop=24)


def test_convert_cli_on_an_official_file(tmp_path, capsys):
    """``python convert.py X.pt Y.safetensors``: detected as ConvNeXt-V2, tensors kept exactly,
    also for a DDP-prefixed checkpoint; the result loads."""
    sd = strong_state_dict(CONFIGS["custom"], seed=5)
    official_checkpoint({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pt")
    assert (
        convert_cli.main([str(tmp_path / "ddp.pt"), str(tmp_path / "c.safetensors"), "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "convnextv2" and summary["architecture"] == "custom"
    tensors, info = weights.load(tmp_path / "c.safetensors", expect_family=cx.FAMILY)
    assert info["config"] == cx.infer_config(sd)
    assert tensors.keys() == sd.keys()
    assert all(np.array_equal(tensors[k], v) for k, v in sd.items())
    assert cx.load(tmp_path / "c.safetensors").config()["depths"] == [1, 2, 4, 1]
