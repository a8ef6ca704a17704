"""A small synthetic dataset in the challenge layout, for running the pipeline without real data.

Layout written under the output folder (like the real data, plus the hidden answers)::

    classes_b.txt              <Domain>_<name> <id>, no trailing newline (like classes.txt)
    train.txt                  TrainSet/<Domain>/<folder>/<n>.jpg <label>
    TrainSet/<Domain>/<folder>/<n>.jpg
    TestSet/image_<n>.jpg      shuffled over all classes, unseen ones included
    test_labels.txt            image_<n>.jpg <label>: the ground truth, for evaluation only
    DEMO.json                  the generation parameters; written last (marks a complete set)

Five domains as on board B: Animal, Caltech-101, Food-101, Thu-dog and, last, Stanford-Cars with
no training images (unseen). Every class has a visual identity: a shape, a colour palette and
a striped texture (frequency and orientation) drawn on a textured background, with random
position, scale, rotation, aspect ratio and noise per image. The dog classes share one shape and
palette family and differ only in texture orientation and a small hue shift, so they are
fine-grained and harder, as in the challenge. Generation is deterministic in ``seed`` (the same
bytes every time) and takes about a second.

With ``nasty=True`` a few test images are stored in awkward encodings: greyscale JPEG, CMYK
JPEG, palette PNG with a transparent index, 16-bit greyscale PNG, an EXIF-rotated JPEG, and one
truncated JPEG (undecodable: it must still get a prediction and a line in warnings.txt).
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1

DOMAINS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Animal", ("Bear", "Bee", "Bird", "Butterfly", "Camel", "Cat")),
    ("Caltech-101", ("Faces_easy", "Leopards", "Motorbikes", "airplanes", "anchor")),
    ("Food-101", ("apple_pie", "baklava", "pizza", "sushi", "waffles")),
    (
        "Thu-dog",
        ("Shiba_Dog", "French_bulldog", "Siberian_husky", "malamute", "Pomeranian", "pug"),
    ),
    (
        "Stanford-Cars",
        (
            "Audi_R8_Coupe_2012",
            "BMW_X6_SUV_2012",
            "Toyota_Sequoia_SUV_2012",
            "Volvo_C30_Hatchback_2012",
        ),
    ),
)
UNSEEN_DOMAINS = ("Stanford-Cars",)
FINE_GRAINED_DOMAINS = ("Thu-dog",)
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
NASTY_KINDS = ("grey", "cmyk", "palette_alpha", "grey16", "exif_rotated", "truncated")


@dataclass(frozen=True)
class DemoParams:
    seed: int = 0
    train_per_class: int = 12
    test_per_class: int = 5
    min_size: int = 64
    max_size: int = 96
    nasty: bool = False
    version: int = GENERATOR_VERSION


@dataclass(frozen=True)
class _Style:
    shape: str
    fg: tuple[np.ndarray, np.ndarray]  # two stripe colours, RGB floats in [0, 1]
    freq: float  # stripes per unit length of the shape's frame
    angle: float  # stripe orientation (radians) in the shape's frame
    elong: float  # shape aspect ratio


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _styles(num_classes: int, domains: list[str]) -> list[_Style]:
    """One visual identity per class; distinct for ordinary classes, near each other for the
    fine-grained domain."""
    styles = []
    ordinary = 0
    fine = 0
    for c in range(num_classes):
        if domains[c] in FINE_GRAINED_DOMAINS:
            # Same blob and brown family: only the stripe angle and a small hue shift differ.
            hue = 0.07 + 0.012 * (fine % 3)
            styles.append(
                _Style(
                    "circle",
                    (_hsv(hue, 0.65, 0.55), _hsv(hue, 0.35, 0.9)),
                    3.0,
                    np.pi * fine / 6,
                    1.5,
                )
            )
            fine += 1
            continue
        i = ordinary
        ordinary += 1
        hue = (i * 0.381966) % 1.0  # golden-ratio hue steps keep neighbours apart
        styles.append(
            _Style(
                SHAPES[i % len(SHAPES)],
                (_hsv(hue, 0.85, 0.9), _hsv(hue + 0.5, 0.6, 0.35 + 0.3 * ((i // 8) % 2))),
                (1.5, 3.0, 5.0)[(i // 3) % 3],
                np.pi * ((i * 5) % 8) / 8,
                1.0,
            )
        )
    return styles


def _mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-size shape in its own (already rotated, scaled) frame."""
    r = np.hypot(x, y)
    t = np.arctan2(y, x)
    if shape == "circle":
        return r < 1
    if shape == "square":
        return np.maximum(abs(x), abs(y)) < 0.8
    if shape == "triangle":
        return (y > -0.6) & (1.732 * abs(x) + y < 0.9)
    if shape == "star":
        return r < 0.55 + 0.4 * np.cos(5 * t) ** 2
    if shape == "ring":
        return (r < 1) & (r > 0.55)
    if shape == "cross":
        return ((abs(x) < 0.3) | (abs(y) < 0.3)) & (np.maximum(abs(x), abs(y)) < 1)
    if shape == "diamond":
        return abs(x) + abs(y) < 1
    if shape == "hexagon":
        return np.maximum(abs(x) * 0.866 + abs(y) * 0.5, abs(y)) < 0.85
    raise ValueError(shape)


def _render(style: _Style, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """One image of a class: uint8 [h, w, 3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Background: a low-saturation colour, a gentle gradient and blurred noise.
    bg = _hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.4, 0.95))
    g = rng.normal(size=2) * 0.15
    grad = (g[0] * (xx / w - 0.5) + g[1] * (yy / h - 0.5))[..., None]
    coarse = rng.normal(size=(4, 4, 3)) * 0.06
    blur = (
        np.asarray(
            Image.fromarray(((coarse + 0.5) * 255).clip(0, 255).astype(np.uint8)).resize(
                (w, h), Image.BICUBIC
            ),
            np.float64,
        )
        / 255
        - 0.5
    )
    img = bg[None, None] + grad + blur
    # The object, in its own frame: random centre, scale and rotation (+-25 degrees).
    s = min(w, h) * rng.uniform(0.28, 0.42)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    a = rng.uniform(-0.44, 0.44)
    u = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / s
    v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / s
    inside = _mask(style.shape, u / style.elong, v)
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
    """(extension, file bytes) of ``arr`` in an awkward encoding."""
    im = Image.fromarray(arr)
    buf = io.BytesIO()
    if kind == "grey":
        im.convert("L").save(buf, "JPEG", quality=90)
    elif kind == "cmyk":
        im.convert("CMYK").save(buf, "JPEG", quality=90)
    elif kind == "palette_alpha":
        p = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        # Make the top-left corner's palette entry transparent (background pixels).
        p.info["transparency"] = p.getpixel((0, 0))
        p.save(buf, "PNG", transparency=p.info["transparency"])
        return ".png", buf.getvalue()
    elif kind == "grey16":
        g = np.asarray(im.convert("L"), np.uint16) * 257
        Image.fromarray(g).save(buf, "PNG")
        return ".png", buf.getvalue()
    elif kind == "exif_rotated":
        # Stored rotated by 90 degrees with orientation 6 ("rotate 90 CW to display"): a
        # decoder that ignores EXIF sees the image on its side.
        exif = Image.Exif()
        exif[0x0112] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif)
    elif kind == "truncated":
        data = _jpeg(arr)
        return ".jpg", data[: len(data) // 2]
    else:
        raise ValueError(kind)
    return ".jpg", buf.getvalue()


def class_names() -> list[str]:
    """Raw class names of the demo, in id order."""
    return [f"{d}_{n}" for d, names in DOMAINS for n in names]


def generate(out_dir: str | os.PathLike, params: DemoParams = DemoParams()) -> dict:
    """Write the demo dataset into ``out_dir`` (created; must not exist or be empty).
    Returns the summary also stored in DEMO.json."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; the demo generator only writes fresh folders")
    rng = np.random.default_rng(params.seed)
    names = class_names()
    domains = [n.split("_", 1)[0] for n in names]
    styles = _styles(len(names), domains)

    def size() -> tuple[int, int]:
        return tuple(int(v) for v in rng.integers(params.min_size, params.max_size + 1, 2))

    out.mkdir(parents=True, exist_ok=True)
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

    labels = np.repeat(np.arange(len(names)), params.test_per_class)
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
        if i in nasty_at:
            ext, data = _nasty(nasty_at[i], arr)
        else:
            ext, data = ".jpg", _jpeg(arr)
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
    """The demo dataset at ``out_dir``, generated if absent or made with other parameters.

    Generation goes to a temporary sibling folder renamed into place, so an interrupted run
    never leaves a half-written dataset. A folder without DEMO.json is never touched (it may be
    real data): FileExistsError.
    """
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
        raise FileExistsError(
            f"{out}: exists and is not a demo dataset (no DEMO.json); refusing to overwrite"
        )
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        summary = generate(tmp, params)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info(
        "demo dataset: %d classes, %d training and %d test images in %s",
        summary["classes"],
        summary["train_images"],
        summary["test_images"],
        out,
    )
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Generate the synthetic demo dataset.")
    ap.add_argument("out_dir", help="folder to create (must not exist or be empty)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-class", type=int, default=12)
    ap.add_argument("--test-per-class", type=int, default=5)
    ap.add_argument("--nasty", action="store_true", help="add awkwardly encoded test images")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ensure_demo(
        args.out_dir,
        DemoParams(args.seed, args.train_per_class, args.test_per_class, nasty=args.nasty),
    )


if __name__ == "__main__":
    main()
