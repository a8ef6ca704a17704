"""Few-shot methods over feature arrays, one per module: ``templates`` and ``zeroshot`` (text
classifier), ``inmap``, ``lpp``, ``tip_adapter``, ``amu``, ``transclip``. Array conventions,
defaults and determinism: docs/METHODS.md, at the top.
"""
