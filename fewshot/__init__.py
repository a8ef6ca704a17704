"""Few-shot methods over feature arrays: zero-shot CLIP, InMaP, LP++, Tip-Adapter(-F),
AMU-Tuning. Inputs are numpy arrays or jt.Var; the computation runs in Jittor."""
