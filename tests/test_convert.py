"""convert.py / models.convert: every upstream format of CLIP, converted and loaded, against
OpenAI's own model; and the refusals (missing, truncated, foreign, unsafe files)."""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import pickle
import pickletools
import re
import subprocess
import sys
import warnings
from pathlib import Path

import _reference as R  # first: torch before Jittor
import numpy as np
import pytest
import torch

from models import clip, weights
from models import convert as C
from models.runtime import jittor
from models.weights import WeightsError

jt = jittor("cpu")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
PROMPTS = ["a photo of a dog.", "a drawing of a cat", "x"]
ARCHS = {"vit": R.SMALL_VIT, "rn": R.SMALL_RN}


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _trace_openai_archive(model: torch.nn.Module, arch: dict, path: Path) -> Path:
    """An archive made the way OpenAI's released files are: the model in fp16 (OpenAI's
    convert_weights), the three buffers registered, encode_image/encode_text/forward traced."""
    m = copy.deepcopy(model)
    R.openai_model().convert_weights(m)
    for name, value in (
        ("input_resolution", arch["image_resolution"]),
        ("context_length", arch["context_length"]),
        ("vocab_size", arch["vocab_size"]),
    ):
        m.__dict__.pop(name, None)  # the plain int attribute OpenAI's class sets
        m.register_buffer(name, torch.tensor(value))
    r = arch["image_resolution"]
    image = torch.zeros(1, 3, r, r, dtype=torch.float16)
    text = torch.from_numpy(clip.tokenize("a dog"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks made constant
        traced = torch.jit.trace_module(
            m.eval(),
            {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
            check_trace=False,
        )
    traced.save(str(path))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Per architecture: the fp32 reference (weights rounded through fp16 where OpenAI stores
    fp16) and the same weights in each upstream format."""
    d = tmp_path_factory.mktemp("sources")
    out = {}
    for name, arch in ARCHS.items():
        ref = R.random_openai_clip(arch, seed=11)
        R.fp16_roundtrip(ref)
        sd = _state(ref)
        files = {
            "torchscript": _trace_openai_archive(ref, arch, d / f"{name}-openai.pt"),
            "torch-zip": C.write_torch_checkpoint(sd, d / f"{name}-sd.pt", wrap=None),
            "jittor-pickle": C.write_jclip_pkl(sd, d / f"{name}.pkl"),
        }
        out[name] = (ref, sd, files)
    return out


@pytest.mark.parametrize("fmt", ["torchscript", "torch-zip", "jittor-pickle"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_converted_model_equals_openai(name, fmt, sources, tmp_path):
    ref, sd, files = sources[name]
    dst = tmp_path / "model.safetensors"
    summary = C.convert(files[fmt], dst)
    assert summary["format"] == fmt and summary["family"] == "clip"
    n_weights = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert summary["parameters"] == n_weights
    info = weights.read_info(dst)
    assert info["family"] == "clip" and info["source"]["format"] == fmt
    assert info["config"]["image_resolution"] == ARCHS[name]["image_resolution"]
    if fmt == "torchscript":
        assert summary["source_dtypes"]["float16"] > 0 and summary["source_dtypes"]["int64"] >= 3

    model, preprocess = clip.load(dst)
    r = ARCHS[name]["image_resolution"]
    assert model.visual.input_resolution == r and preprocess.n_px == r
    images = np.random.default_rng(2).standard_normal((3, 3, r, r)).astype(np.float32)
    tokens = clip.tokenize(PROMPTS)
    want_img, want_txt = R.reference_features(ref, images, tokens)
    with jt.no_grad():
        img = model.encode_image(images).numpy()
        txt = model.encode_text(tokens).numpy()
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    np.testing.assert_allclose(img, want_img, atol=TOL, rtol=0)
    np.testing.assert_allclose(txt, want_txt, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(ARCHS))
def test_written_archive_converts_like_a_traced_openai_archive(name, sources, tmp_path):
    _, sd, files = sources[name]
    arch = ARCHS[name]
    written = C.write_openai_archive(
        sd, tmp_path / "w.pt", arch["image_resolution"], 77, arch["vocab_size"]
    )
    a_tensors, a_info = weights.load(C.convert(files["torchscript"], tmp_path / "a.st")["dst"])
    b_tensors, b_info = weights.load(C.convert(written, tmp_path / "b.st")["dst"])
    assert a_info["config"] == b_info["config"]
    assert a_info["source"]["dtypes"] == b_info["source"]["dtypes"]
    assert a_tensors.keys() == b_tensors.keys()
    for k in a_tensors:
        np.testing.assert_array_equal(a_tensors[k], b_tensors[k], err_msg=k)
    # The same keys and dtypes as the state dict of the traced model.
    traced = torch.jit.load(str(files["torchscript"])).state_dict()
    mine = torch.jit.load(str(written)).state_dict()
    assert {k: v.dtype for k, v in traced.items()} == {k: v.dtype for k, v in mine.items()}


def _pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) globals a pickle stream asks for, in order."""
    out, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.append((strings[-2], strings[-1]))
        elif op.name == "GLOBAL":
            out.append(tuple(arg.split(" ", 1)))
    return out


def test_jclip_pickle_is_what_jt_save_writes(sources, tmp_path):
    _, sd, _ = sources["vit"]
    # JCLIP's recipe: the TorchScript state dict with every entry .float(), then jt.save.
    state = dict(sd, input_resolution=np.int64(32), context_length=np.int64(77))
    state["vocab_size"] = np.int64(49408)
    jclip = collections.OrderedDict((k, torch.tensor(v).float()) for k, v in state.items())
    jt.save(jclip, str(tmp_path / "jt.pkl"))
    ours = C.write_jclip_pkl(state, tmp_path / "ours.pkl")
    # Same pickle structure (torch's legacy storage keys are pointers, so bytes differ), and
    # Jittor's own loader accepts ours (it checks the SHA-1 trailer).
    a, b = (tmp_path / "jt.pkl").read_bytes(), ours.read_bytes()
    assert a[-8:] == b[-8:] == C.JITTOR_PICKLE_MAGIC and len(a) == len(b)
    assert _pickle_globals(a[:-28]) == _pickle_globals(b[:-28])
    back = jt.load(str(ours))
    assert list(back) == list(jclip)
    for k in jclip:
        assert torch.equal(back[k], jclip[k])
    summary = C.convert(tmp_path / "jt.pkl", tmp_path / "jt.safetensors")
    assert summary["format"] == "jittor-pickle"
    assert summary["source_dtypes"] == {"float32": len(state)}
    # The float buffers became config, not tensors.
    tensors, info = weights.load(tmp_path / "jt.safetensors")
    assert "input_resolution" not in tensors and info["config"]["context_length"] == 77
    ours_tensors, _ = weights.load(C.convert(ours, tmp_path / "ours.safetensors")["dst"])
    for k in tensors:
        np.testing.assert_array_equal(tensors[k], ours_tensors[k])


def test_wrapped_prefixed_and_legacy_checkpoints(sources, tmp_path):
    _, sd, _ = sources["rn"]
    wrapped = {"state_dict": {f"module.{k}": torch.tensor(v) for k, v in sd.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    torch.save(
        {k: torch.tensor(v) for k, v in sd.items()},
        tmp_path / "legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    a = C.convert(tmp_path / "wrapped.pt", tmp_path / "a.st")
    b = C.convert(tmp_path / "legacy.pt", tmp_path / "b.st")
    assert (a["format"], b["format"]) == ("torch-zip", "torch-legacy")
    ta, _ = weights.load(tmp_path / "a.st")
    tb, _ = weights.load(tmp_path / "b.st")
    assert ta.keys() == tb.keys() and "visual.bn1.num_batches_tracked" not in ta
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k])
        np.testing.assert_array_equal(ta[k], np.asarray(sd[k], np.float32).reshape(ta[k].shape))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "convert.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_converts_and_logs_what_it_found(sources, tmp_path):
    _, _, files = sources["vit"]
    dst = tmp_path / "cli.safetensors"
    r = _run_cli(str(files["torchscript"]), str(dst), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["family"] == "clip" and summary["format"] == "torchscript"
    assert "TorchScript archive" in r.stderr and "trusted" in r.stderr
    for word in ("torchscript", "family clip", "architecture custom", "parameters", "float16"):
        assert word in r.stderr
    assert (
        weights.read_info(dst)["source"]["sha256"]
        == hashlib.sha256(files["torchscript"].read_bytes()).hexdigest()
    )


def test_cli_refuses_a_missing_file(tmp_path):
    r = _run_cli(str(tmp_path / "nope.pt"), str(tmp_path / "x.safetensors"))
    assert r.returncode == 1 and "no such file" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_refuses_truncated_files(sources, tmp_path):
    _, _, files = sources["vit"]
    for fmt, match in [
        ("torchscript", "truncated or corrupt"),
        ("torch-zip", "truncated or corrupt"),
        ("jittor-pickle", "truncated or corrupt"),
    ]:
        data = files[fmt].read_bytes()
        cut = tmp_path / f"cut-{fmt}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(C.ConversionError, match=match):
            C.convert(cut, tmp_path / "x.safetensors")
    # A bare pickle (no jt.save checksum) cut short.
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps({"a": np.zeros(1000, np.float32)}, 4)[:500])
    with pytest.raises(C.ConversionError, match="truncated or corrupt pickle"):
        C.convert(bare, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_refuses_a_checkpoint_of_another_network(tmp_path):
    src = C.write_torch_checkpoint(
        {"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)},
        tmp_path / "mlp.pt",
    )
    with pytest.raises(C.ConversionError, match="not a CLIP or ConvNeXt-V2 checkpoint"):
        C.convert(src, tmp_path / "x.safetensors")
    with pytest.raises(C.ConversionError, match="does not look like a clip checkpoint"):
        C.convert(src, tmp_path / "x.safetensors", family="clip")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickles_with_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"visual.proj": _Evil(marker)}, 4)
    jclip = tmp_path / "evil.pkl"
    jclip.write_bytes(data + hashlib.sha1(data).digest() + C.JITTOR_PICKLE_MAGIC)
    with pytest.raises(C.ConversionError, match=r"refused: the pickle asks for (posix|os)\.system"):
        C.convert(jclip, tmp_path / "x.safetensors")
    torch.save({"model": {"w": _Evil(marker)}}, tmp_path / "evil.pt")
    torch.save(
        {"w": _Evil(marker)}, tmp_path / "evil-legacy.pt", _use_new_zipfile_serialization=False
    )
    for name in ("evil.pt", "evil-legacy.pt"):
        with pytest.raises(C.ConversionError) as e:
            C.convert(tmp_path / name, tmp_path / "x.safetensors")
        # Our own one line: the file, the global it asks for, what to do; never torch's advice
        # to retry with weights_only=False.
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: refused") and "\n" not in msg, msg
        assert re.search(r"asks for (posix|os)\.system", msg), msg
        assert "official" in msg and "False" not in msg, msg
    assert not marker.exists()


def test_refuses_a_converted_file_and_inconsistent_buffers(sources, tmp_path):
    _, sd, files = sources["vit"]
    C.convert(files["torch-zip"], tmp_path / "ok.safetensors")
    with pytest.raises(C.ConversionError, match="already converted clip file"):
        C.convert(tmp_path / "ok.safetensors", tmp_path / "again.safetensors")
    bad = C.write_openai_archive(sd, tmp_path / "bad.pt", 64, 77, 49408)  # the weights say 32
    with pytest.raises(C.ConversionError, match="input_resolution=64 disagrees"):
        C.convert(bad, tmp_path / "x.safetensors")


def test_clip_load_refuses_other_families_and_missing_files(tmp_path):
    weights.save(
        tmp_path / "convnext.safetensors",
        {"head.weight": np.zeros((2, 2), np.float32)},
        family="convnextv2",
        config={},
    )
    with pytest.raises(WeightsError, match="'convnextv2' weights, but a 'clip' model"):
        clip.load(tmp_path / "convnext.safetensors")
    with pytest.raises(WeightsError, match=r"(?s)weight file not found.*ViT-B-32.pt"):
        clip.load(tmp_path / "missing.safetensors")


def test_convnext_checkpoint_is_detected_and_refused_by_clip_load(tmp_path):
    from models import convnext

    sd = convnext.random_state_dict("atto", seed=0)
    src = C.write_torch_checkpoint(sd, tmp_path / "convnextv2_atto.pt", wrap="model")
    summary = C.convert(src, tmp_path / "cnx.safetensors")
    assert summary["family"] == "convnextv2"
    with pytest.raises(WeightsError, match="'convnextv2' weights"):
        clip.load(tmp_path / "cnx.safetensors")
    with pytest.raises(C.ConversionError, match="does not look like a clip"):
        C.convert(src, tmp_path / "x.safetensors", family="clip")


def test_jittor_initialised_model_round_trips_through_an_archive(tmp_path):
    # What the demo does: a randomly initialised Jittor CLIP written as an OpenAI archive.
    from models.clip.model import CLIP

    model = CLIP(**R.SMALL_RN, seed=4)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    assert state["logit_scale"].shape == (1,)
    src = C.write_openai_archive(state, tmp_path / "rn.pt", 64, 77, 49408, half=False)
    assert torch.jit.load(str(src)).state_dict()["logit_scale"].shape == ()
    C.convert(src, tmp_path / "rn.safetensors")
    loaded, _ = clip.load(tmp_path / "rn.safetensors")
    for k, v in loaded.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)


def test_jt_save_of_jittor_vars_converts(tmp_path):
    # A state dict saved from Jittor itself pickles jittor Vars (rebuilt from numpy arrays).
    from models.clip.model import CLIP

    model = CLIP(**R.SMALL_VIT, seed=2)
    jt.save(model.state_dict(), str(tmp_path / "jittor.pkl"))
    summary = C.convert(tmp_path / "jittor.pkl", tmp_path / "jittor.safetensors")
    assert summary["format"] == "jittor-pickle" and summary["family"] == "clip"
    tensors, _ = weights.load(tmp_path / "jittor.safetensors")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(tensors[k].reshape(v.shape), v.numpy(), err_msg=k)


def test_refuses_to_convert_a_file_onto_itself(sources, tmp_path, monkeypatch):
    # `convert.py X X` (or the same file spelt another way, or through a link) would replace
    # the downloaded checkpoint with its conversion: refused before anything is read.
    _, _, files = sources["rn"]
    src = tmp_path / "sub" / "RN.pt"
    src.parent.mkdir()
    src.write_bytes(files["torch-zip"].read_bytes())
    before = src.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    (tmp_path / "hard.pt").hardlink_to(src)
    spellings = [
        (src, src),
        (src, tmp_path / "sub" / ".." / "sub" / "RN.pt"),
        (src, link),
        (link, src),
        (src, tmp_path / "hard.pt"),
    ]

    def read_nothing(path):
        raise AssertionError(f"read {path}")

    with monkeypatch.context() as m:
        m.setattr(C, "read_state_dict", read_nothing)
        for a, b in spellings:
            with pytest.raises(C.ConversionError, match="is the source file itself") as e:
                C.convert(a, b)
            assert "\n" not in str(e.value) and str(b) in str(e.value)
    r = _run_cli(str(src), f"{tmp_path}/sub/../sub/./RN.pt")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is the source file itself" in lines[0], r.stderr
    assert src.read_bytes() == before and link.read_bytes() == before


@pytest.mark.parametrize("width", [80, 96])
def test_resnets_of_widths_other_than_64_convert_and_equal_openai(width, tmp_path):
    # RN50x4 (width 80) and RN50x16 (width 96): OpenAI's attention pool has width * 32 // 64
    # heads of 64, whatever the width. Small depth and resolution, the same code paths.
    arch = dict(R.SMALL_RN, vision_width=width, vision_layers=(1, 1, 1, 1), image_resolution=32)
    ref = R.random_openai_clip(arch, seed=5)
    R.fp16_roundtrip(ref)
    src = _trace_openai_archive(ref, arch, tmp_path / f"rn{width}.pt")
    summary = C.convert(src, tmp_path / "rn.safetensors")
    cfg = summary["config"]
    assert cfg["vision_width"] == width and cfg["vision_heads"] == width // 2
    assert cfg["vision_layers"] == [1, 1, 1, 1] and cfg["image_resolution"] == 32
    model, _ = clip.load(tmp_path / "rn.safetensors")
    images = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    tokens = clip.tokenize(PROMPTS)
    want_img, want_txt = R.reference_features(ref, images, tokens)
    with jt.no_grad():
        img = model.encode_image(images).numpy()
        txt = model.encode_text(tokens).numpy()
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    np.testing.assert_allclose(img, want_img, atol=TOL, rtol=0)
    np.testing.assert_allclose(txt, want_txt, atol=TOL, rtol=0)
