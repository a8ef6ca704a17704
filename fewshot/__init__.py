"""Few-shot methods over feature arrays, one per module: ``templates`` and ``zeroshot`` (text
classifier), ``inmap``, ``lpp``, ``tip_adapter``, ``amu``, ``transclip``.

Inputs are numpy arrays or jt.Var (cast to float32); every array returned is a float32 numpy array
that owns its memory (labels and counts: int64); the computation runs in Jittor. Image features
X [n, d] have L2-normalised rows, the text classifier T [d, C] unit columns. Official defaults live
in one frozen config dataclass per method; docs/METHODS.md lists them and every deviation. Every
method is deterministic for a given seed.
"""
