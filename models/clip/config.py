"""CLIP architecture from a state dict alone, as OpenAI's ``build_model`` infers it: pure Python
on shapes and key names, so the converter uses it on torch tensors and numpy arrays alike."""

from __future__ import annotations

import re
from typing import Any, Mapping

# The three non-weight buffers that OpenAI's TorchScript archives carry in their state dict.
ARCHIVE_BUFFERS = ("input_resolution", "context_length", "vocab_size")

# Released OpenAI architectures, by the numbers that tell them apart (_ARCH_KEYS).
_ARCH_KEYS = ("vision_layers", "vision_width", "vision_patch_size", "image_resolution", "embed_dim")
KNOWN_ARCHITECTURES = {
    "RN50": ((3, 4, 6, 3), 64, None, 224, 1024),
    "RN101": ((3, 4, 23, 3), 64, None, 224, 512),
    "RN50x4": ((4, 6, 10, 6), 80, None, 288, 640),
    "RN50x16": ((6, 8, 18, 8), 96, None, 384, 768),
    "RN50x64": ((3, 15, 36, 10), 128, None, 448, 1024),
    "ViT-B/32": (12, 768, 32, 224, 512),
    "ViT-B/16": (12, 768, 16, 224, 512),
    "ViT-L/14": (24, 1024, 14, 224, 768),
    "ViT-L/14@336px": (24, 1024, 14, 336, 768),
}

# The challenge's two backbones as OpenAI's build_model infers them from the released files
# (random-weight stand-ins: the demo's "full" size, benchmarks, tests).
_B_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8)
FULL_SIZE_CLIP: dict[str, dict[str, Any]] = {
    name: dict(zip(_ARCH_KEYS, KNOWN_ARCHITECTURES[name]), transformer_layers=12, **_B_TEXT)
    for name in ("ViT-B/32", "RN101")
}

# Keys every CLIP state dict has, whatever its image tower.
_TEXT_KEYS = (
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
)
# And the keys of its image tower: a ViT's projection or a ModifiedResNet's attention pool.
_TOWER_KEYS = ("visual.proj", "visual.attnpool.positional_embedding")


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in v.shape)


def matches(state_dict: Mapping[str, Any]) -> bool:
    """True when ``state_dict`` has the key layout of an OpenAI CLIP (ViT or ModifiedResNet)."""
    return all(k in state_dict for k in _TEXT_KEYS) and any(k in state_dict for k in _TOWER_KEYS)


def _grid(state_dict: Mapping[str, Any], key: str) -> int:
    """The side of a positional embedding's square grid (its rows: grid**2 + 1)."""
    n_pos = _shape(state_dict[key])[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid + 1 != n_pos:
        raise ValueError(f"{key} has {n_pos} rows, not a square grid + 1")
    return grid


def _count_blocks(keys, prefix: str) -> int:
    """Number of distinct ``prefix<i>.`` indices, as OpenAI counts layers."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """All architecture numbers of a CLIP state dict, as OpenAI's build_model infers them (heads:
    width // 64; ResNet pool: width * 32 // 64). ValueError names what is missing or unusable."""
    if not matches(state_dict):
        missing = [k for k in _TEXT_KEYS if k not in state_dict]
        if not any(k in state_dict for k in _TOWER_KEYS):
            missing.append(" or ".join(_TOWER_KEYS))
        raise ValueError(f"not a CLIP state dict: missing {', '.join(missing)}")
    keys = list(state_dict)
    try:
        cfg: dict[str, Any] = {}
        if "visual.proj" in state_dict:
            conv = _shape(state_dict["visual.conv1.weight"])
            grid = _grid(state_dict, "visual.positional_embedding")
            cfg["vision_width"] = conv[0]
            cfg["vision_layers"] = sum(
                1 for k in keys if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")
            )
            cfg["vision_patch_size"] = conv[-1]
            cfg["image_resolution"] = conv[-1] * grid
            cfg["vision_heads"] = cfg["vision_width"] // 64
        else:
            cfg["vision_layers"] = [_count_blocks(keys, f"visual.layer{b}.") for b in (1, 2, 3, 4)]
            cfg["vision_width"] = _shape(state_dict["visual.layer1.0.conv1.weight"])[0]
            cfg["vision_patch_size"] = None
            cfg["image_resolution"] = _grid(state_dict, "visual.attnpool.positional_embedding") * 32
            cfg["vision_heads"] = cfg["vision_width"] * 32 // 64
        cfg["embed_dim"] = _shape(state_dict["text_projection"])[1]
        cfg["context_length"] = _shape(state_dict["positional_embedding"])[0]
        cfg["vocab_size"] = _shape(state_dict["token_embedding.weight"])[0]
        cfg["transformer_width"] = _shape(state_dict["ln_final.weight"])[0]
        cfg["transformer_heads"] = cfg["transformer_width"] // 64
        cfg["transformer_layers"] = _count_blocks(keys, "transformer.resblocks.")
    except KeyError as e:
        raise ValueError(f"incomplete CLIP state dict: missing {e.args[0]!r}") from e
    # OpenAI's build_model accepts any widths; its attention then needs at least one head, and
    # heads that split the attention's width (RN50x4's 80 gives 40 heads of 64 in a 2560-wide
    # pool; a ViT of width 96 has 1 head of 96). Refuse only what OpenAI's model cannot run.
    vision_dim = cfg["vision_width"] * (1 if "visual.proj" in state_dict else 32)
    for name, dim, heads in (
        ("vision_width", vision_dim, cfg["vision_heads"]),
        ("transformer_width", cfg["transformer_width"], cfg["transformer_heads"]),
    ):
        if heads < 1 or dim % heads:
            raise ValueError(
                f"{name}={cfg[name]} gives {heads} attention heads for a {dim}-wide attention "
                "(OpenAI's CLIP needs at least one head, and heads that split the width)"
            )
    cfg["architecture"] = architecture_name(cfg)
    return cfg


def architecture_name(cfg: Mapping[str, Any]) -> str:
    """The OpenAI release name ("ViT-B/32", "RN101", ...) of a config, or "custom"."""
    key = tuple(tuple(v) if isinstance(v, list) else v for v in (cfg[k] for k in _ARCH_KEYS))
    return next((name for name, known in KNOWN_ARCHITECTURES.items() if known == key), "custom")


def prepare_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The weights only: drops OpenAI's archive buffers, which must agree with the weights'
    shapes (else ValueError: a damaged or edited file), and BatchNorm ``num_batches_tracked``."""
    out = {
        k: v
        for k, v in state_dict.items()
        if k not in ARCHIVE_BUFFERS and not k.endswith(".num_batches_tracked")
    }
    cfg = infer_config(out)
    implied = (cfg["image_resolution"], cfg["context_length"], cfg["vocab_size"])
    for name, expect in zip(ARCHIVE_BUFFERS, implied):
        if name in state_dict:
            value = state_dict[name]
            # JCLIP's pickles hold these as float tensors (it calls .float() on everything).
            got = int(round(float(value.item() if hasattr(value, "item") else value)))
            if got != expect:
                raise ValueError(
                    f"buffer {name}={got} disagrees with the weights, which imply {expect}"
                )
    return out
