"""Convert an upstream checkpoint to the project's float32 safetensors.

    python convert.py ViT-B-32.pt  out/weights/ViT-B-32.safetensors      # OpenAI TorchScript
    python convert.py RN101.pt     out/weights/RN101.safetensors
    python convert.py ViT-B-32.pkl out/weights/ViT-B-32.safetensors      # JCLIP's jt.save pickle
    python convert.py convnextv2_base_1k_224_ema.pt out/weights/convnextv2_base.safetensors

The source format and the model family are detected (``--family`` forces one); the
architecture is read from the weights and stored in the file's header. TorchScript archives
are programs that torch compiles while loading: convert only files from trusted sources.
See docs/CONVERSION.md.
"""

from __future__ import annotations

import json
import logging
import sys

from pipeline.cli import parser, setup_logging

log = logging.getLogger("convert")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, common=False)
    ap.add_argument("src", help="upstream checkpoint (.pt TorchScript/torch.save, JCLIP .pkl)")
    ap.add_argument("dst", help="output .safetensors file")
    ap.add_argument(
        "--family",
        default="auto",
        choices=["auto", "clip", "convnextv2"],
        help="model family (default: detected from the key layout)",
    )
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = ap.parse_args(argv)
    setup_logging()
    from models.convert import convert
    from models.weights import WeightsError

    try:
        summary = convert(args.src, args.dst, family=args.family)
    except WeightsError as e:
        log.error("%s", e)
        return 1
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
