"""Synthetic data in the challenge layout (demo, benchmarks, tests) and random-weight checkpoints
in the upstream formats; ``python -m pipeline.synthetic --help`` writes either. The demo dataset
and its layout: docs/DATA.md, "Demo dataset".
"""

from __future__ import annotations

import argparse
import colorsys
import concurrent.futures as cf
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from models.clip.config import FULL_SIZE_CLIP
from pipeline.env import REPO_ROOT, WEIGHT_FILES
from pipeline.lists import read_class_list

log = logging.getLogger(__name__)


_CARS = "Audi_R8_Coupe_2012 BMW_X6_SUV_2012 Toyota_Sequoia_SUV_2012 Volvo_C30_Hatchback_2012"
DOMAINS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Animal", ("Bear", "Bee", "Bird", "Butterfly", "Camel", "Cat")),
    ("Caltech-101", ("Faces_easy", "Leopards", "Motorbikes", "airplanes", "anchor")),
    ("Food-101", ("apple_pie", "baklava", "pizza", "sushi", "waffles")),
    ("Thu-dog", tuple("Shiba_Dog French_bulldog Siberian_husky malamute Pomeranian pug".split())),
    ("Stanford-Cars", tuple(_CARS.split())),
)
UNSEEN_DOMAINS = ("Stanford-Cars",)
FINE_GRAINED_DOMAINS = ("Thu-dog",)
# Inside-tests of the unit-size shapes in their own (rotated, scaled) frame: x, y, radius, angle.
_MASKS = {
    "circle": lambda x, y, r, t: r < 1,
    "square": lambda x, y, r, t: np.maximum(abs(x), abs(y)) < 0.8,
    "triangle": lambda x, y, r, t: (y > -0.6) & (1.732 * abs(x) + y < 0.9),
    "star": lambda x, y, r, t: r < 0.55 + 0.4 * np.cos(5 * t) ** 2,
    "ring": lambda x, y, r, t: (r < 1) & (r > 0.55),
    "cross": lambda x, y, r, t: (
        ((abs(x) < 0.3) | (abs(y) < 0.3)) & (np.maximum(abs(x), abs(y)) < 1)
    ),
    "diamond": lambda x, y, r, t: abs(x) + abs(y) < 1,
    "hexagon": lambda x, y, r, t: np.maximum(abs(x) * 0.866 + abs(y) * 0.5, abs(y)) < 0.85,
}
SHAPES = tuple(_MASKS)
NASTY_KINDS = ("grey", "cmyk", "palette_alpha", "grey16", "exif_rotated", "truncated")


@dataclass(frozen=True)
class DemoParams:
    seed: int = 0
    train_per_class: int = 12
    test_per_class: int = 5
    unseen_per_class: Optional[int] = None  # test images per unseen class (None: test_per_class)
    min_size: int = 64
    max_size: int = 96
    nasty: bool = False
    version: int = 1  # of the generator: a new version regenerates existing demo sets


@dataclass(frozen=True)
class _Style:
    shape: str
    fg: tuple[np.ndarray, np.ndarray]  # two stripe colours, RGB floats in [0, 1]
    freq: float  # stripes per unit length of the shape's frame
    angle: float  # stripe orientation (radians) in the shape's frame
    elong: float  # shape aspect ratio


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _styles(domains: list[str]) -> list[_Style]:
    """One visual identity per class: distinct, or near each other in the fine-grained domain."""
    styles = []
    ordinary = fine = 0
    for domain in domains:
        if domain in FINE_GRAINED_DOMAINS:
            # Same blob and brown family: only the stripe angle and a small hue shift differ.
            hue = 0.07 + 0.012 * (fine % 3)
            colours = (_hsv(hue, 0.65, 0.55), _hsv(hue, 0.35, 0.9))
            styles.append(_Style("circle", colours, 3.0, np.pi * fine / 6, 1.5))
            fine += 1
            continue
        i = ordinary
        ordinary += 1
        hue = (i * 0.381966) % 1.0  # golden-ratio hue steps keep neighbours apart
        colours = (_hsv(hue, 0.85, 0.9), _hsv(hue + 0.5, 0.6, 0.35 + 0.3 * ((i // 8) % 2)))
        freq, angle = (1.5, 3.0, 5.0)[(i // 3) % 3], np.pi * ((i * 5) % 8) / 8
        styles.append(_Style(SHAPES[i % len(SHAPES)], colours, freq, angle, 1.0))
    return styles


def _render(style: _Style, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """One image of a class: uint8 [h, w, 3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Background: a low-saturation colour, a gentle gradient and blurred noise.
    bg = _hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.4, 0.95))
    g = rng.normal(size=2) * 0.15
    grad = (g[0] * (xx / w - 0.5) + g[1] * (yy / h - 0.5))[..., None]
    coarse = Image.fromarray(((rng.normal(size=(4, 4, 3)) * 0.06 + 0.5) * 255).clip(0, 255)
                             .astype(np.uint8))  # fmt: skip
    blur = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.float64) / 255 - 0.5
    img = bg[None, None] + grad + blur
    # The object, in its own frame: random centre, scale and rotation (+-25 degrees).
    s = min(w, h) * rng.uniform(0.28, 0.42)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    a = rng.uniform(-0.44, 0.44)
    u = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / s
    v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / s
    x = u / style.elong
    inside = _MASKS[style.shape](x, v, np.hypot(x, v), np.arctan2(v, x))
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(
        2 * np.pi * style.freq * (u * np.cos(style.angle) + v * np.sin(style.angle)) + phase
    )
    mix = (0.5 + 0.5 * stripes)[..., None]
    jitter = rng.normal(0, 0.03, 3)
    fg = style.fg[0] * mix + style.fg[1] * (1 - mix) + jitter
    img = np.where(inside[..., None], fg, img)
    img = img + rng.normal(0, 0.03, img.shape)
    return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _nasty(kind: str, arr: np.ndarray) -> tuple[str, bytes]:
    """(extension, file bytes) of ``arr`` in an awkward encoding (one of NASTY_KINDS)."""
    if kind == "truncated":
        data = _jpeg(arr)
        return ".jpg", data[: len(data) // 2]
    im = Image.fromarray(arr)
    buf = io.BytesIO()
    if kind == "palette_alpha":
        p = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        p.save(buf, "PNG", transparency=p.getpixel((0, 0)))  # the background's entry
    elif kind == "grey16":
        Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257).save(buf, "PNG")
    elif kind == "exif_rotated":
        # Stored on its side with orientation 6 ("rotate 90 CW to display"): a decoder that
        # ignores EXIF sees it rotated.
        exif = Image.Exif()
        exif[0x0112] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif)
    else:
        im.convert({"grey": "L", "cmyk": "CMYK"}[kind]).save(buf, "JPEG", quality=90)
    return (".png" if kind in ("palette_alpha", "grey16") else ".jpg"), buf.getvalue()


def _generate(out: Path, params: DemoParams) -> dict:
    """Write the demo dataset into the new folder ``out``; returns DEMO.json's summary."""
    rng = np.random.default_rng(params.seed)
    names = [f"{d}_{n}" for d, names in DOMAINS for n in names]  # raw names, in id order
    domains = [n.split("_", 1)[0] for n in names]
    styles = _styles(domains)

    def size() -> tuple[int, int]:
        return tuple(int(v) for v in rng.integers(params.min_size, params.max_size + 1, 2))

    out.mkdir(parents=True)
    text = "\n".join(f"{n} {i}" for i, n in enumerate(names))  # no trailing newline
    (out / "classes_b.txt").write_text(text, encoding="utf-8")

    train_lines = []
    for c, name in enumerate(names):
        if domains[c] in UNSEEN_DOMAINS:
            continue
        folder = out / "TrainSet" / domains[c] / name.split("_", 1)[1]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, params.train_per_class + 1):
            (folder / f"{k}.jpg").write_bytes(_jpeg(_render(styles[c], rng, *size())))
            train_lines.append(f"{folder.relative_to(out).as_posix()}/{k}.jpg {c}")
    (out / "train.txt").write_text("".join(x + "\n" for x in train_lines), encoding="utf-8")

    unseen_n = params.test_per_class if params.unseen_per_class is None else params.unseen_per_class
    per_class = [unseen_n if d in UNSEEN_DOMAINS else params.test_per_class for d in domains]
    labels = np.repeat(np.arange(len(names)), per_class)
    labels = labels[rng.permutation(len(labels))]
    nasty_at = {}
    if params.nasty:
        picks = rng.choice(len(labels), size=len(NASTY_KINDS), replace=False)
        nasty_at = {int(i): k for i, k in zip(picks, NASTY_KINDS)}
    test_dir = out / "TestSet"
    test_dir.mkdir()
    test_lines = []
    for i, c in enumerate(labels.tolist()):
        arr = _render(styles[c], rng, *size())
        ext, data = _nasty(nasty_at[i], arr) if i in nasty_at else (".jpg", _jpeg(arr))
        fname = f"image_{i + 1}{ext}"
        (test_dir / fname).write_bytes(data)
        test_lines.append(f"{fname} {c}")
    (out / "test_labels.txt").write_text("".join(x + "\n" for x in test_lines), encoding="utf-8")

    summary = {
        "params": asdict(params),
        "classes": len(names),
        "domains": [d for d, _ in DOMAINS],
        "unseen_domains": list(UNSEEN_DOMAINS),
        "train_images": len(train_lines),
        "test_images": len(test_lines),
        "nasty": {f"image_{i + 1}": k for i, k in sorted(nasty_at.items())},
    }
    (out / "DEMO.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def ensure_demo(out_dir: str | os.PathLike, params: DemoParams = DemoParams()) -> Path:
    """The demo dataset at ``out_dir``, generated if absent or made with other parameters;
    FileExistsError for a folder without DEMO.json (docs/DATA.md, "Demo dataset")."""
    out = Path(out_dir)
    marker = out / "DEMO.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text())["params"] == asdict(params):
                return out
        except (OSError, ValueError, KeyError):
            pass
        log.info("demo dataset at %s was made with other parameters; regenerating", out)
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not a demo dataset (no DEMO.json); kept")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run with this pid
    try:
        summary = _generate(tmp, params)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {k: summary[k] for k in ("train_images", "test_images")}
    log.info("demo dataset in %s: %s", out, counts)
    return out


def _write_photo(task: tuple[str, tuple[int, int], list[float], list[int]]) -> None:
    """Worker: one JPEG that compresses like a photo (smooth waves, a tint and noise), its size
    and pixels drawn from its own seed."""
    path, long_side, tint, seed = task
    rng = np.random.default_rng(seed)
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = int(long * rng.uniform(0.6, 1.0))
    w, h = (long, short) if rng.random() < 0.7 else (short, long)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.004, 0.04, 3).astype(np.float32)
    ph = rng.uniform(0, 6.3, 3).astype(np.float32)
    img = np.stack([np.sin(f[c] * (xx + (c + 1) * yy) + ph[c]) for c in range(3)], -1)
    img = img * 70 + 255 * np.asarray(tint).astype(np.float32)
    img += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def photo_dataset(
    folder: str | os.PathLike,
    classes_file: str | os.PathLike = REPO_ROOT / "data" / "classes_b.txt",
    *,
    train_per_class: int = 24,
    test_images: int = 4305,
    long_side: tuple[int, int] = (300, 640),
    seed: int = 0,
) -> dict[str, Any]:
    """The demo's layout over a real class list with photo-sized JPEGs (long side drawn from
    ``long_side``, a tint per class), for the benchmarks: ``train_per_class`` images per class
    outside UNSEEN_DOMAINS, ``test_images`` labelled uniformly over all classes. Each image has
    its own seed (the same files whatever the number of processes); a complete folder
    (``PHOTOS.json`` matching the parameters) is reused."""
    folder = Path(folder)
    params = {
        "classes": str(Path(classes_file).resolve()),
        "train_per_class": train_per_class,
        "test_images": test_images,
        "unseen_domains": list(UNSEEN_DOMAINS),
        "long_side": list(long_side),
        "seed": seed,
        "version": 2,
    }
    marker = folder / "PHOTOS.json"
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    classes = read_class_list(classes_file)
    shutil.copyfile(classes_file, folder / "classes_b.txt")
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0.2, 0.8, (len(classes), 3)).tolist()
    tasks, train_lines = [], []
    for c, dom in enumerate(classes.domains):
        if dom in UNSEEN_DOMAINS:
            continue
        sub = folder / "TrainSet" / (dom or "misc") / f"c{c:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            tasks.append((str(sub / f"{k}.jpg"), long_side, tints[c], [seed, 1, c, k]))
            train_lines.append(f"{sub.relative_to(folder).as_posix()}/{k}.jpg {c}")
    test_dir = folder / "TestSet"
    test_dir.mkdir()
    labels = rng.integers(0, len(classes), test_images).tolist()
    lines = []
    for i, c in enumerate(labels):
        tasks.append((str(test_dir / f"image_{i + 1}.jpg"), long_side, tints[c], [seed, 2, i]))
        lines.append(f"image_{i + 1}.jpg {c}")
    log.info("writing %d photo-like JPEGs into %s", len(tasks), folder)
    with cf.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_photo, tasks, chunksize=32))
    (folder / "train.txt").write_text("".join(x + "\n" for x in train_lines))
    (folder / "test_labels.txt").write_text("".join(x + "\n" for x in lines))
    summary = {"params": params, "train_images": len(train_lines), "test_images": test_images}
    marker.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# Small members of the real families at 224 px (a ViT with the B/32 patch size, a ModifiedResNet
# with attention pooling, ConvNeXt-V2-atto); widths are the smallest OpenAI's inference accepts.
_SMALL = dict(embed_dim=64, vision_width=64, transformer_width=64, transformer_heads=1)
DEMO_CLIP: dict[str, dict[str, Any]] = {
    "vit": dict(FULL_SIZE_CLIP["ViT-B/32"], **_SMALL, vision_layers=2, transformer_layers=2),
    "rn": dict(FULL_SIZE_CLIP["RN101"], **_SMALL, vision_layers=(1, 1, 1, 1), transformer_layers=2),
}
# size -> (CLIP configs by backbone, ConvNeXt-V2 variant)
WEIGHT_SIZES: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "demo": (DEMO_CLIP, "atto"),
    "full": ({"vit": FULL_SIZE_CLIP["ViT-B/32"], "rn": FULL_SIZE_CLIP["RN101"]}, "base"),
}
UPSTREAM_NAMES = {"vit": "ViT-B-32.pt", "rn": "RN101.pt", "convnext": "convnextv2_1k_224_ema.pt"}


def clip_state(config: dict, seed: int) -> dict[str, np.ndarray]:
    """A randomly initialised CLIP (OpenAI's initialisation) as name -> float32 array."""
    from models.clip.model import CLIP
    from models.runtime import jittor

    jittor()
    model = CLIP(**config, seed=seed)
    sd = {k: np.array(v.numpy(), np.float32) for k, v in model.state_dict().items()}
    sd["logit_scale"] = sd["logit_scale"].reshape(())  # 0-d, as in OpenAI's files
    return sd


def write_weights(
    folder: str | os.PathLike, size: str = "demo", seed: int = 0, direct: bool = False
) -> dict[str, Path]:
    """Random-weight checkpoints in the upstream formats under ``folder/upstream``, converted with
    convert.py as a user does to the default names in ``folder`` (existing files kept); needs
    torch. ``direct``: the same weights (CLIP's not rounded to float16) saved converted at once,
    without torch. Returns {"vit", "rn", "convnext"} -> converted file."""
    if not direct:
        import torch  # noqa: F401  - before Jittor: their MKL runtimes clash the other way round
    from models import convnext
    from models.convert import save_converted, write_openai_archive, write_torch_checkpoint

    if size not in WEIGHT_SIZES:
        raise ValueError(f"size must be one of {sorted(WEIGHT_SIZES)}, not {size!r}")
    clip_configs, variant = WEIGHT_SIZES[size]
    targets = {k: Path(folder) / WEIGHT_FILES[k].default for k in UPSTREAM_NAMES}
    for i, (name, src) in enumerate(UPSTREAM_NAMES.items()):
        src, cfg = Path(folder) / "upstream" / src, clip_configs.get(name)
        if targets[name].is_file():
            continue
        if direct or not src.is_file():
            sd = clip_state(cfg, seed + i) if cfg else convnext.random_state_dict(variant, seed)
        if direct:
            save_converted(sd, targets[name], {"file": src.name, "format": "random", "seed": seed})
            continue
        if not src.is_file() and cfg is None:
            write_torch_checkpoint(sd, src, wrap="model")
        elif not src.is_file():
            res, ctx, vocab = (cfg[k] for k in ("image_resolution", "context_length", "vocab_size"))
            write_openai_archive(sd, src, res, ctx, vocab)
        cmd = [sys.executable, str(REPO_ROOT / "convert.py"), str(src), str(targets[name])]
        log.info("$ %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
    return targets


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic dataset or random weights.")
    ap.add_argument("what", choices=("demo", "photos", "weights"))
    ap.add_argument("out_dir", help="folder to write")
    ap.add_argument("--size", choices=sorted(WEIGHT_SIZES), default="demo", help="weights size")
    ap.add_argument("--direct", action="store_true", help="weights: converted at once, no torch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nasty", action="store_true", help="demo: awkwardly encoded test images")
    ap.add_argument("--test-images", type=int, default=4305, help="photos: test images")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.what == "demo":
        ensure_demo(args.out_dir, DemoParams(args.seed, nasty=args.nasty))
    elif args.what == "photos":
        photo_dataset(args.out_dir, test_images=args.test_images, seed=args.seed)
    else:
        write_weights(args.out_dir, args.size, args.seed, args.direct)


if __name__ == "__main__":
    main()
