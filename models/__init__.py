"""Networks and weight I/O in Jittor: CLIP (``models.clip``), ConvNeXt-V2
(``models.convnext_v2``), converted-weight files (``models.weights``)."""
