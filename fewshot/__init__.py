"""Few-shot methods over feature arrays: zero-shot CLIP, InMaP, LP++, Tip-Adapter(-F),
AMU-Tuning, TransCLIP. Inputs are numpy arrays or jt.Var; the computation runs in Jittor.

Array rule (every public function and method of this package): inputs may be numpy arrays or
jt.Var (any float dtype; cast to float32); every array returned is a float32 numpy array that owns
its memory (labels and counts: int64). Computation happens in Jittor, on the GPU when
``models.runtime`` selected one.

Conventions: image features X [n, d] with L2-normalised rows; text classifier T [d, C] with unit
columns (``fewshot.zeroshot.build_text_classifier``). Official defaults live in one frozen
dataclass per method (``InMaPConfig``, ``LPPConfig``, ``TipConfig``, ``AMUConfig``,
``TransCLIPConfig``), each documented
with its source; ``docs/METHODS.md`` lists them and every deviation.

Modules: ``templates`` and ``zeroshot`` (text classifier), ``inmap``, ``lpp``, ``tip_adapter``,
``amu``, ``transclip``. Every method is deterministic for a given seed.
"""
