"""Prompt templates and class-name cleaning for the zero-shot text classifier (the template sets
and ``name_edits``: docs/METHODS.md, 'Zero-shot classifier')."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence, Union

log = logging.getLogger(__name__)

SINGLE: tuple[str, ...] = ("a photo of a {}.",)

# The 7-template ensemble of OpenAI's "Prompt_Engineering_for_ImageNet" notebook (InMaP main.py).
ENSEMBLE7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# Domain prefixes of the challenge class lists, in the order of classes_b.txt.
DOMAINS: tuple[str, ...] = ("Animal", "Caltech-101", "Food-101", "Thu-dog", "Stanford-Cars")

DOMAIN_TEMPLATES: dict[str, str] = {
    "Animal": "a photo of a {}.",
    "Caltech-101": "a photo of a {}.",
    "Food-101": "a photo of a {}, a type of food.",
    "Thu-dog": "a photo of a {}, a type of dog.",
    "Stanford-Cars": "a photo of a {}, a type of car.",
}

CHALLENGE_TEMPLATES: dict[str, str] = {
    "Food-101": "a photo of a {}, a type of food",
    "Thu-dog": "a photo of a {}, a type of dog",
}

TEMPLATE_SETS = ("single", "ensemble7", "domain", "challenge", "bare", "descriptions")


def class_domain(raw: str) -> str | None:
    """Challenge domain of a class-list name ("Thu-dog_Chihuahua" -> "Thu-dog"), else None."""
    return next((dom for dom in DOMAINS if raw.startswith(dom + "_")), None)


def strip_class_id(raw: str) -> str:
    """Drop the " <id>" of a class-list line ("Animal_Bear 0" -> "Animal_Bear")."""
    name = raw.strip()
    head, sep, tail = name.rpartition(" ")
    return head.strip() if sep and tail.isdigit() else name


def bare_class_name(raw: str) -> str:
    """The class name after the domain prefix, as written: "Caltech-101_Faces_easy 53" ->
    "Faces_easy"."""
    name = strip_class_id(raw)
    dom = class_domain(name)
    return name[len(dom) + 1 :] if dom is not None else name


def clean_class_name(raw: str) -> str:
    """Readable class name: drop a trailing " <id>", the domain prefix, and turn "_" into " ".

    "Stanford-Cars_Audi_R8_Coupe_2012 389" -> "Audi R8 Coupe 2012".
    """
    return " ".join(bare_class_name(raw).replace("_", " ").split())


def load_descriptions(path: Union[str, Path]) -> dict[str, list[str]]:
    """Read a JSON object {class name: [sentence, ...]} (a single string is accepted too)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read class descriptions: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping class name -> sentences")
    out: dict[str, list[str]] = {}
    for key, val in data.items():
        sentences = [val] if isinstance(val, str) else val
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{path}: entry {key!r} must be a string or a list of strings")
        if not sentences:
            raise ValueError(f"{path}: entry {key!r} has no sentence")
        out[key] = sentences
    return out


def class_prompts(
    class_names: Sequence[str],
    templates: Union[str, Sequence[str]] = "domain",
    descriptions: Union[Mapping[str, Sequence[str]], str, Path, None] = None,
    name_edits: Union[Mapping[str, str], None] = None,
) -> list[list[str]]:
    """The prompts of every class: a list (one per class) of sentences.

    class_names: raw class-list names (with domain prefix) or plain names.
    templates: a set name from :data:`TEMPLATE_SETS` or a sequence of "{}" templates.
    descriptions: mapping or JSON path, used with templates="descriptions"; looked up by raw
    name, then by cleaned name; classes without an entry fall back to their domain template.
    name_edits: raw class name -> the name its prompts use, in raw form (underscores).
    """
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"template set must be one of {TEMPLATE_SETS}, not {templates!r}")
        if templates == "descriptions" and descriptions is None:
            raise ValueError("templates='descriptions' needs descriptions (a mapping or JSON path)")
    elif not templates or not all("{}" in t for t in templates):
        raise ValueError("every template must contain '{}' for the class name")
    if isinstance(descriptions, (str, Path)):
        descriptions = load_descriptions(descriptions)

    prompts: list[list[str]] = []
    missing = []
    for raw in class_names:
        key = strip_class_id(raw)
        dom = class_domain(key)
        bare = (name_edits or {}).get(key) or bare_class_name(key)
        name = clean_class_name(bare)
        domain_t = DOMAIN_TEMPLATES.get(dom, SINGLE[0])
        if templates == "single":
            prompts.append([SINGLE[0].format(name)])
        elif templates == "ensemble7":
            prompts.append([t.format(name) for t in ENSEMBLE7])
        elif templates == "domain":
            prompts.append([domain_t.format(name)])
        elif templates == "challenge":
            prompts.append([CHALLENGE_TEMPLATES.get(dom, "a photo of a {}").format(name)])
        elif templates == "bare":
            prompts.append([bare])
        elif templates == "descriptions":
            sents = descriptions.get(key) or descriptions.get(name)
            if sents is None:
                missing.append(name)
                sents = [domain_t.format(name)]
            # A mapping may give one sentence as a plain string (as load_descriptions allows).
            prompts.append([sents] if isinstance(sents, str) else list(sents))
        else:
            prompts.append([t.format(name) for t in templates])
    if missing:
        log.warning(
            "%d classes have no description and use their domain template (e.g. %s)",
            len(missing),
            ", ".join(missing[:3]),
        )
    return prompts
