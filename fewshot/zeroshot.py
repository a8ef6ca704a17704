"""Zero-shot CLIP text classifier T [d, C] and logits ``100 X @ T``: docs/METHODS.md, 'Zero-shot
classifier'. Prompts are encoded in fixed-size batches (the last one padded by repeating rows), so
the text tower compiles for one batch shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from fewshot._tensor import as_numpy, as_var, forward_only, jt, l2_normalize
from fewshot.templates import class_prompts


def encode_prompts(
    model: Any,
    prompts: Sequence[str],
    tokenize: Callable[[list[str]], Any] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """L2-normalised text embeddings [P, d] of the prompts, encoded in batches of batch_size."""
    j = jt()
    if tokenize is None:
        from models.clip import tokenize
    P = len(prompts)
    if P == 0:
        raise ValueError("no prompt to encode")
    tokens = np.asarray(tokenize(list(prompts)))
    bs = min(batch_size, P)
    out = []
    with j.no_grad():
        for start in range(0, P, bs):
            chunk = tokens[start : start + bs]
            real = chunk.shape[0]
            if real < bs:  # pad with repeated rows: one batch shape for the whole run
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], bs - real, axis=0)], axis=0)
            emb = model.encode_text(j.array(chunk))
            emb = l2_normalize(as_var(emb, "encode_text output", ndim=2), dim=1)
            out.append(as_numpy(emb)[:real])
    return np.concatenate(out, axis=0)


@forward_only
def text_classifier_from_prompts(
    model: Any,
    prompts: Sequence[Sequence[str]],
    tokenize: Callable[[list[str]], Any] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """T [d, C] from a list (one per class) of prompt lists."""
    counts = np.array([len(p) for p in prompts])
    if len(prompts) == 0 or (counts == 0).any():
        raise ValueError("every class needs at least one prompt")
    flat = [s for p in prompts for s in p]
    E = encode_prompts(model, flat, tokenize, batch_size)
    owner = np.repeat(np.arange(len(prompts)), counts)
    # Averaging matrix [C, P]: row c holds 1/count_c on the prompts of class c.
    A = np.zeros((len(prompts), len(flat)), np.float32)
    A[owner, np.arange(len(flat))] = 1.0 / counts[owner]
    j = jt()
    means = j.array(A) @ j.array(E)
    return as_numpy(l2_normalize(means, dim=1).transpose(1, 0))


def build_text_classifier(
    model: Any,
    class_names: Sequence[str],
    templates: Union[str, Sequence[str]] = "domain",
    descriptions: Union[Mapping[str, Sequence[str]], str, Path, None] = None,
    tokenize: Callable[[list[str]], Any] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Zero-shot text classifier T [d, C] (unit columns) of class-list names (cleaned here);
    templates and descriptions: see :func:`fewshot.templates.class_prompts`."""
    prompts = class_prompts(class_names, templates, descriptions)
    return text_classifier_from_prompts(model, prompts, tokenize, batch_size)


@forward_only
def zero_shot_logits(X, T, scale: float = 100.0) -> np.ndarray:
    """scale * X @ T for L2-normalised image features X [n, d] (numpy out)."""
    Xv = as_var(X, "X", ndim=2)
    Tv = as_var(T, "T [d, C]", ndim=2)
    if Xv.shape[1] != Tv.shape[0]:
        raise ValueError(f"X has d={Xv.shape[1]} but T is {tuple(Tv.shape)}; T must be [d, C]")
    return as_numpy(scale * (Xv @ Tv))
