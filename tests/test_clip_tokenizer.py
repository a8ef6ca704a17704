"""models.clip.tokenizer against OpenAI's SimpleTokenizer and clip.tokenize."""

from __future__ import annotations

import _reference as R
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.clip.tokenizer import Tokenizer, default_tokenizer, tokenize

CORPUS = [
    "a photo of a dog.",
    "A PHOTO OF A Golden Retriever!!!",
    "Café naïve résumé Ångström Ærøskøbing",
    "北京欢迎你，東京タワー と 서울",
    "emoji 🐶🐱👍🏽 🇫🇷 family 👨‍👩‍👧",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot; &#39;x&#39; &eacute;",
    "  lots   of\t\n  whitespace\u00a0and\u2003more  ",
    "don't we'll I'd THEY'RE it's you've I'm",
    "123 4567 3.14159 1st 2nd ½ ² ٣",
    "<|startoftext|> special <|endoftext|> tokens inside",
    "mojibake fixed by ftfy: schÃ¶n, Ã©tÃ©",
    "ligature ﬁne ﬂow, full-width ＡＢＣ",
    "punctuation ... ?! -- (brackets) [x] {y} @#$%^&*_+=~`|\\/<>",
    "",
    "   ",
    "x" * 300,
    "the quick brown fox " * 30,
]


@pytest.fixture(scope="module")
def reference():
    return R.openai_tokenizer()


def test_vocabulary_is_openais(reference):
    tok = default_tokenizer()
    assert len(tok.encoder) == 49408
    assert tok.encoder == reference.encoder
    assert tok.bpe_ranks == reference.bpe_ranks
    assert (tok.sot_token, tok.eot_token) == (49406, 49407)


@pytest.mark.parametrize("text", CORPUS)
def test_encode_equals_openai(text, reference):
    assert default_tokenizer().encode(text) == reference.encode(text)


def test_tokenize_equals_clip_tokenize(reference):
    short = [t for t in CORPUS if len(reference.encode(t)) <= 75]
    got = tokenize(short)
    assert got.dtype == np.int64 and got.shape == (len(short), 77)
    np.testing.assert_array_equal(got, R.openai_tokenize(reference, short))
    np.testing.assert_array_equal(tokenize(short[0]), R.openai_tokenize(reference, short[0]))


def test_truncate_ends_with_eot_like_openai(reference):
    got = tokenize(CORPUS, truncate=True)
    np.testing.assert_array_equal(got, R.openai_tokenize(reference, CORPUS, truncate=True))
    long_rows = [i for i, t in enumerate(CORPUS) if len(reference.encode(t)) > 75]
    assert long_rows and (got[long_rows, -1] == 49407).all()


def test_context_length_argument(reference):
    got = tokenize(CORPUS[:5], context_length=20, truncate=True)
    want = R.openai_tokenize(reference, CORPUS[:5], context_length=20, truncate=True)
    np.testing.assert_array_equal(got, want)


def test_too_long_raises_naming_the_text():
    text = "the quick brown fox " * 30
    with pytest.raises(RuntimeError, match="the quick brown fox.*too long for context length 77"):
        tokenize(["fine", text])


def test_exact_fit_is_not_an_error(reference):
    # 75 word tokens + SOT + EOT = 77: fits without truncation.
    text = " ".join(["dog"] * 75)
    assert len(reference.encode(text)) == 75
    got = tokenize(text)
    assert got[0, -1] == 49407 and got[0, 0] == 49406


def test_cache_does_not_change_results():
    fresh = Tokenizer()
    a = [fresh.encode(t) for t in CORPUS]
    b = [fresh.encode(t) for t in CORPUS]  # second pass hits the cache
    assert a == b == [default_tokenizer().encode(t) for t in CORPUS]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_random_unicode_equals_openai(text):
    assert default_tokenizer().encode(text) == R.openai_tokenizer().encode(text)
