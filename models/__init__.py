"""Networks and weight I/O in Jittor: CLIP (``models.clip``), ConvNeXt-V2
(``models.convnext``), converted-weight files (``models.weights``)."""
