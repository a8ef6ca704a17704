"""Zero-shot text classifier: class-name cleaning, template sets, description files, and the
classifier built with a small fake text encoder (duck-typed like models.clip's CLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _reference import SMALL_VIT  # imports torch first, as the project asks

from fewshot import templates as TP
from fewshot._tensor import jt
from fewshot.zeroshot import build_text_classifier, encode_prompts, zero_shot_logits

ROOT = Path(__file__).resolve().parents[1]
DIM, CTX = 16, 77


class FakeTokenizer:
    """Words -> ids (1 + vocabulary index), padded with 0 to 77, like clip.tokenize's shape."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, texts):
        out = np.zeros((len(texts), CTX), np.int64)
        for i, t in enumerate(texts):
            ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()]
            out[i, : len(ids)] = ids
        return out


class FakeTextModel:
    """encode_text = position-weighted sum of random token embeddings (not normalised)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.table = rng.normal(size=(512, DIM)).astype(np.float32)
        self.pos = (1.0 + np.arange(CTX) / 10.0).astype(np.float32)
        self.batch_shapes: list[tuple[int, ...]] = []

    def numpy_encode(self, tokens: np.ndarray) -> np.ndarray:
        emb = self.table[tokens] * (tokens > 0)[..., None] * self.pos[None, :, None]
        return 3.0 * emb.sum(1)

    def encode_text(self, tokens):
        self.batch_shapes.append(tuple(tokens.shape))
        return jt().array(self.numpy_encode(tokens.numpy()))


def reference_classifier(model, tok, prompts):
    cols = []
    for ps in prompts:
        e = model.numpy_encode(tok(ps)).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(0)
        cols.append(m / np.linalg.norm(m))
    return np.stack(cols, axis=1)


def test_class_names_are_cleaned():
    assert TP.clean_class_name("Animal_Bear") == "Bear"
    assert TP.clean_class_name("Caltech-101_Faces_easy 58") == "Faces easy"
    assert TP.clean_class_name("Food-101_apple_pie") == "apple pie"
    assert TP.clean_class_name("Thu-dog_Chihuahua") == "Chihuahua"
    assert TP.clean_class_name("Stanford-Cars_Audi_R8_Coupe_2012 389") == "Audi R8 Coupe 2012"
    assert TP.clean_class_name("golden retriever") == "golden retriever"
    assert TP.class_domain("Stanford-Cars_Audi_R8_Coupe_2012") == "Stanford-Cars"
    assert TP.class_domain("golden retriever") is None


def test_every_challenge_class_has_a_domain_in_the_documented_counts():
    lines = (ROOT / "data" / "classes_b.txt").read_text().splitlines()
    doms = [TP.class_domain(TP.strip_class_id(line)) for line in lines if line.strip()]
    counts = {d: doms.count(d) for d in TP.DOMAINS}
    assert counts == {"Animal": 52, "Caltech-101": 91, "Food-101": 101, "Thu-dog": 130,
                      "Stanford-Cars": 29}  # fmt: skip
    names = [TP.clean_class_name(line) for line in lines if line.strip()]
    assert names[0] == "Bear" and names[-1] == TP.clean_class_name(lines[-1].split()[0])
    assert all(n and "_" not in n and TP.class_domain(n + "_x") is None for n in names)
    assert not any(n.split()[-1] == line.split()[-1] for n, line in zip(names, lines))


def test_template_sets():
    assert len(TP.ENSEMBLE7) == 7 and "itap of a {}." in TP.ENSEMBLE7
    assert "a origami {}." in TP.ENSEMBLE7 and "a {} in a video game." in TP.ENSEMBLE7
    names = ["Thu-dog_Chihuahua", "Food-101_apple_pie", "Stanford-Cars_BMW_M3", "Animal_Bee"]
    dom = TP.class_prompts(names, "domain")
    assert dom == [
        ["a photo of a Chihuahua, a type of dog."],
        ["a photo of a apple pie, a type of food."],
        ["a photo of a BMW M3, a type of car."],
        ["a photo of a Bee."],
    ]
    assert TP.class_prompts(names[:1], "single") == [["a photo of a Chihuahua."]]
    assert TP.class_prompts(names[:1], "ensemble7")[0][0] == "itap of a Chihuahua."
    assert TP.class_prompts(names[:1], ["{} here", "x {}"]) == [["Chihuahua here", "x Chihuahua"]]
    with pytest.raises(ValueError, match="template set"):
        TP.class_prompts(names, "nine")
    with pytest.raises(ValueError, match="'{}'"):
        TP.class_prompts(names, ["no slot"])


def test_descriptions_from_json_by_raw_or_clean_name_with_domain_fallback(tmp_path):
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"Thu-dog_Chihuahua": ["tiny dog", "big ears"], "Bee": "insect"}))
    prompts = TP.class_prompts(
        ["Thu-dog_Chihuahua 244", "Animal_Bee", "Food-101_apple_pie"], "descriptions", path
    )
    assert prompts == [
        ["tiny dog", "big ears"],
        ["insect"],
        ["a photo of a apple pie, a type of food."],
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Bee": [1, 2]}))
    with pytest.raises(ValueError, match="bad.json"):
        TP.load_descriptions(bad)
    with pytest.raises(ValueError, match="needs descriptions"):
        TP.class_prompts(["Animal_Bee"], "descriptions")


def test_classifier_is_normalised_mean_of_normalised_embeddings():
    names = ["Animal_Bear", "Thu-dog_Chihuahua", "Food-101_apple_pie", "Caltech-101_Faces_easy"]
    tok, model = FakeTokenizer(), FakeTextModel()
    T = build_text_classifier(model, names, "ensemble7", tokenize=tok, batch_size=5)
    assert T.shape == (DIM, 4) and T.dtype == np.float32
    ref = reference_classifier(model, tok, TP.class_prompts(names, "ensemble7"))
    np.testing.assert_allclose(T, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(T, axis=0), 1, rtol=1e-5)
    # 28 prompts in batches of 5: every call has the same shape (last batch padded).
    assert set(model.batch_shapes) == {(5, CTX)} and len(model.batch_shapes) == 6
    T_one = build_text_classifier(model, names, "ensemble7", tokenize=tok, batch_size=256)
    np.testing.assert_allclose(T_one, T, atol=1e-6)


def test_uneven_prompt_counts_per_class(tmp_path):
    desc = {"Animal_Bear": ["a", "b c", "d e f"], "Animal_Bee": ["g"]}
    tok, model = FakeTokenizer(), FakeTextModel(1)
    T = build_text_classifier(model, ["Animal_Bear", "Animal_Bee"], "descriptions", desc, tok)
    ref = reference_classifier(model, tok, [desc["Animal_Bear"], desc["Animal_Bee"]])
    np.testing.assert_allclose(T, ref, atol=1e-5)
    E = encode_prompts(model, ["g"], tok)
    np.testing.assert_allclose(E[0], ref[:, 1], atol=1e-5)


def test_zero_shot_logits_are_100_x_at_t():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, DIM)).astype(np.float32)
    T = rng.normal(size=(DIM, 3)).astype(np.float32)
    np.testing.assert_allclose(zero_shot_logits(X, T), 100 * X @ T, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[d, C\]"):
        zero_shot_logits(X, T.T)


def test_with_the_jittor_clip_and_its_tokenizer():
    """The duck-typed interface against models.clip: batched, padded encoding of the real
    tokenizer's ids gives the classifier built prompt by prompt."""
    from models.clip import tokenize
    from models.clip.model import CLIP

    model = CLIP(**SMALL_VIT, seed=0)
    model.eval()
    names = ["Animal_Bear", "Thu-dog_Chihuahua", "Food-101_apple_pie"]
    T = build_text_classifier(model, names, "ensemble7", batch_size=8)  # 21 prompts: 8, 8, 5+3
    cols = []
    with jt().no_grad():
        for prompts in TP.class_prompts(names, "ensemble7"):
            e = np.concatenate([model.encode_text(tokenize([p])).numpy() for p in prompts])
            e = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)
            cols.append(e.mean(0) / np.linalg.norm(e.mean(0)))
    np.testing.assert_allclose(T, np.stack(cols, 1), atol=1e-5)
    assert T.shape == (SMALL_VIT["embed_dim"], 3)


def test_challenge_and_bare_sets_are_the_challenge_solutions_text():
    """Against a restatement of the challenge solution's prompt code (test.py, few_lp.py) over
    board B's whole class list: stage 2 "a photo of a {name}[, a type of dog/food]" with
    underscores as spaces; stage 1 the bare name, underscores kept, two Audi names edited."""
    from pipeline.env import REPO_ROOT
    from pipeline.lists import read_class_list

    names = list(read_class_list(REPO_ROOT / "data" / "classes_b.txt").names)
    edits = {
        "Stanford-Cars_Audi_TTS_Coupe_2012": "Audi_TTS_Coupe_2012_Sporty_Elegant",
        "Stanford-Cars_Audi_R8_Coupe_2012": "Audi_R8_Coupe_2012_Exotic_Premium",
    }
    described = {"Audi_TTS_Coupe_2012": "Sporty_Elegant", "Audi_R8_Coupe_2012": "Exotic_Premium"}
    suffix = {"Animal": "", "Caltech-101": "", "Food-101": ", a type of food"}
    suffix["Thu-dog"] = ", a type of dog"
    stage1, stage2 = [], []
    for raw in names:
        domain = next(d for d in (*suffix, "Stanford-Cars") if raw.startswith(d + "_"))
        name = raw[len(domain) + 1 :]
        if domain == "Stanford-Cars":
            stage1.append(name + "_" + described[name] if name in described else name)
        else:
            stage1.append(name)
            stage2.append(("a photo of a " + name + suffix[domain]).replace("_", " "))
    assert TP.class_prompts(names, "bare", name_edits=edits) == [[s] for s in stage1]
    assert TP.class_prompts(names[:374], "challenge") == [[s] for s in stage2]
    assert stage1[:2] == ["Bear", "Bee"] and "Faces_easy" in stage1
    assert TP.class_prompts(["Animal_Bee"], "bare") == [["Bee"]]  # no edit: the bare name
