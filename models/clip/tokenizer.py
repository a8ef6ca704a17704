"""CLIP's byte-level BPE tokenizer, equal to OpenAI's ``SimpleTokenizer`` and ``clip.tokenize``,
over OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (49,408 tokens; 49406/49407 start/end of text)."""

from __future__ import annotations

import gzip
import html
from pathlib import Path
from typing import Sequence, Union

import ftfy
import numpy as np
import regex

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
# The merges used: the file's first line is a version header, and OpenAI keeps exactly enough
# merges for a 49152-token BPE vocabulary (256 bytes x 2 forms, merges, 2 specials, see below).
_N_MERGES = 49152 - 256 - 2
# OpenAI's pre-tokeniser: the two special tokens, English contractions, runs of letters, single
# digits, runs of anything else that is neither space, letter nor digit.
_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
    r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
_CACHE_LIMIT = 1 << 18


def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes onto printable characters: printable Latin-1
    stands for itself, the rest moves to 256 and up in byte order (no symbol is whitespace)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    moved = [b for b in range(256) if b not in set(keep)]
    # Insertion order matters: it is the order of the first 256 vocabulary entries.
    mapping = {b: chr(b) for b in keep}
    mapping.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return mapping


def _clean(text: str) -> str:
    """OpenAI's basic_clean then whitespace_clean."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip()


class Tokenizer:
    """Encoder over the CLIP vocabulary (OpenAI's encode), with a cache of BPE results per word."""

    def __init__(self, vocab_file: Union[str, Path] = VOCAB_FILE):
        lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_file}: not a CLIP BPE merges file")
        self.byte_encoder = byte_to_char()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token = self.encoder[SOT]
        self.eot_token = self.encoder[EOT]
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _bpe(self, piece: str) -> list[str]:
        """Merge the symbols of one byte-mapped piece, lowest-ranked pair first."""
        word = [*piece[:-1], piece[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            first, second = best
            merged, i, n = [], 0, len(word)
            while i < n:
                # Every non-overlapping occurrence, scanning left to right.
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is None:
            if piece in (SOT, EOT):
                # The special tokens pass through whole (no end-of-word marker).
                ids = (self.encoder[piece],)
            else:
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids = tuple(self.encoder[s] for s in self._bpe(mapped))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (without start/end tokens)."""
        out: list[int] = []
        for piece in self.pattern.findall(_clean(text).lower()):
            out.extend(self._piece_ids(piece))
        return out


_WS = regex.compile(r"\s+")
_default: Tokenizer | None = None


def default_tokenizer() -> Tokenizer:
    """The shared tokenizer over the shipped vocabulary (built on first use, ~0.3 s)."""
    global _default
    if _default is None:
        _default = Tokenizer()
    return _default


def tokenize(
    texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False
) -> np.ndarray:
    """Token ids [N, context_length] int64: <|startoftext|> ids <|endoftext|> 0... A text too
    long raises RuntimeError, or with ``truncate`` is cut and ends in <|endoftext|> (as OpenAI)."""
    if isinstance(texts, str):
        texts = [texts]
    tok = default_tokenizer()
    result = np.zeros((len(texts), context_length), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = [tok.sot_token, *tok.encode(text), tok.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            ids = ids[:context_length]
            ids[-1] = tok.eot_token
        result[i, : len(ids)] = ids
    return result
