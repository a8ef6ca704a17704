"""Random-weight checkpoints for the demo, in the upstream formats users download.

The demo runs the real conversion on files shaped like OpenAI's TorchScript archives and the
official ConvNeXt-V2 ``{'model': state_dict}`` checkpoint, only smaller and untrained: its
accuracy says nothing about the method, only that every step runs. torch is needed here (as for
convert.py), never by train.py or test.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Small members of the real families: a ViT with the B/32 patch size and a ModifiedResNet with
# attention pooling, both at 224 px; widths are the smallest OpenAI's config inference accepts.
DEMO_CLIP: dict[str, dict] = {
    "vit": dict(
        embed_dim=64,
        image_resolution=224,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
    "rn": dict(
        embed_dim=64,
        image_resolution=224,
        vision_layers=(1, 1, 1, 1),
        vision_width=64,
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ),
}
DEMO_CONVNEXT = "atto"
UPSTREAM_NAMES = {"vit": "ViT-demo.pt", "rn": "RN-demo.pt", "convnext": "convnextv2_atto_demo.pt"}


def clip_state(config: dict, seed: int) -> dict[str, np.ndarray]:
    """A randomly initialised CLIP (OpenAI's initialisation) as name -> float32 array."""
    from models.clip.model import CLIP
    from models.runtime import jittor

    jittor()
    model = CLIP(**config, seed=seed)
    return {k: np.array(v.numpy(), np.float32) for k, v in model.state_dict().items()}


def write_upstream_checkpoints(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three demo checkpoints in their upstream formats (skipping existing files)."""
    import torch  # noqa: F401  - before Jittor: their MKL runtimes clash the other way round

    from models import convnext_v2
    from models.convert import write_openai_archive, write_torch_checkpoint

    folder = Path(folder)
    paths = {k: folder / v for k, v in UPSTREAM_NAMES.items()}
    for i, name in enumerate(("vit", "rn")):
        if not paths[name].is_file():
            cfg = DEMO_CLIP[name]
            write_openai_archive(
                clip_state(cfg, seed + i),
                paths[name],
                input_resolution=cfg["image_resolution"],
                context_length=cfg["context_length"],
                vocab_size=cfg["vocab_size"],
            )
            log.info("wrote %s (random-weight OpenAI-format TorchScript archive)", paths[name])
    if not paths["convnext"].is_file():
        sd = convnext_v2.random_state_dict(DEMO_CONVNEXT, seed=seed)
        write_torch_checkpoint(sd, paths["convnext"], wrap="model")
        log.info("wrote %s (random-weight official ConvNeXt-V2 checkpoint)", paths["convnext"])
    return paths


def convert_all(upstream: dict[str, Path], targets: dict[str, Path]) -> None:
    """Run convert.py, as a user would, for every target that does not exist yet."""
    root = Path(__file__).resolve().parent.parent
    for name, dst in targets.items():
        if Path(dst).is_file():
            continue
        cmd = [sys.executable, str(root / "convert.py"), str(upstream[name]), str(dst)]
        log.info("$ %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
