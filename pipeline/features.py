"""The feature cache: every image list is encoded once per encoder, preprocessing and view;
``FeatureCache.get`` is the one entry point. Layout, key and recovery: docs/DATA.md, "Feature
cache"."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from tqdm.auto import tqdm

from models.fileio import write_atomic, write_json_atomic
from pipeline.images import VIEWS, Preprocess, check_views, default_workers, iter_batches
from pipeline.lists import preview

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the layout or anything else that changes stored features changes
CHUNK_SIZE = 512


class FeatureError(RuntimeError):
    """Feature extraction produced unusable output (non-finite values, wrong shape)."""


@dataclass(frozen=True)
class FeatureSet:
    """Features of one image list: ``features[view]`` is float32 [n, d] (row i = image i);
    ``failed``: the images that could not be decoded (their rows encode a grey placeholder)."""

    features: dict[str, np.ndarray]
    failed: tuple[int, ...]

    def __getitem__(self, view: str) -> np.ndarray:
        return self.features[view]


class Encoder(NamedTuple):
    """One encoder for ``FeatureCache.get``: what identifies it in the key, the function
    ``encode(batch float32 [B,3,H,W]) -> [B, d]`` and a label for file names and logs."""

    key_parts: Mapping[str, Any]
    encode: Callable[[np.ndarray], Any]
    label: str


def list_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the ordered (absolute path, size, mtime) of the images: replaced images, or
    another dataset, get another entry."""
    h = hashlib.sha256()
    for p in paths:
        ap = os.path.abspath(os.fspath(p))
        try:
            st = os.stat(ap)
            meta = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            meta = "missing"
        h.update(f"{ap}\0{meta}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def describe_preprocess(preprocess: Preprocess) -> str:
    """The preprocessing's identity for the key: its ``describe()`` string."""
    describe = getattr(preprocess, "describe", None)
    if not callable(describe):  # two preprocessings of one type would share an entry
        raise TypeError(f"preprocess {preprocess!r} has no describe() method (the cache key)")
    return str(describe())


def _fault(feats: np.ndarray, shape: tuple) -> Optional[str]:
    """Why stored features cannot be used (None: they can)."""
    if feats.shape != shape:
        return f"shape {feats.shape}, expected {shape}"
    return None if np.isfinite(feats).all() else "non-finite values"


def _discard(path: Path, shown: Path, problem: str) -> None:
    log.warning("feature cache: %s is unusable (%s); recomputing it", shown, problem)
    path.unlink(missing_ok=True)


class _Entry:
    """One (encoder, view) entry: its files, and the rows known so far (loaded on creation)."""

    def __init__(self, root: Path, encoder: Encoder, view: str, key: dict, size: int) -> None:
        self.encoder, self.view, self.key, self.size = encoder, view, key, size
        self.name = f"{encoder.label} ({view})"
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{encoder.label}-{view}").strip("-")[:60]
        base = root / f"{slug}-{digest}"
        self.array_path = base.with_suffix(".npy")
        self.info_path = base.with_suffix(".json")
        self.part_dir = base.with_suffix(".part")
        self.n_chunks = -(-key["n"] // size)
        self.features: Optional[np.ndarray] = None
        self.dim: Optional[int] = None
        self.failed: list[int] = []
        self.chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chunk -> (rows, failed)
        if not self._load():
            self._load_chunks()

    def _load(self) -> bool:
        """True when the complete entry is on disk and sound."""
        if not self.info_path.is_file():
            return False
        try:
            info = json.loads(self.info_path.read_text())
            feats = np.load(self.array_path, allow_pickle=False)
            if info.get("key") != self.key:
                problem = "written for another key"
            else:
                problem = _fault(feats, (self.key["n"], info.get("dim")))
        except Exception as e:  # noqa: BLE001 - any unreadable entry is simply recomputed
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem:
            _discard(self.info_path, self.array_path, problem)
            return False
        self.features = np.asarray(feats, np.float32)
        self.failed = [int(i) for i in info.get("failed", [])]
        return True

    def rows(self, c: int) -> int:
        return min(self.size, self.key["n"] - c * self.size)

    def chunk_path(self, c: int) -> Path:
        return self.part_dir / f"chunk_{c:05d}.npz"

    def _load_chunks(self) -> None:
        """Finished chunks of an interrupted run (unusable ones are deleted)."""
        for c in range(self.n_chunks):
            path = self.chunk_path(c)
            if not path.is_file():
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    feats, failed = np.array(z["features"], np.float32), np.array(z["failed"])
                problem = _fault(feats, (self.rows(c), self.dim or feats.shape[-1]))
            except Exception as e:  # noqa: BLE001 - any unreadable chunk is simply recomputed
                problem = f"unreadable ({type(e).__name__}: {e})"
            if problem:
                _discard(path, path, problem)
            else:
                self.chunks[c] = (feats, failed.astype(np.int64))
                self.dim = feats.shape[1]

    def missing(self) -> list[int]:
        if self.features is not None:
            return []
        return [c for c in range(self.n_chunks) if c not in self.chunks]

    def encode(self, batch: np.ndarray, paths: list[str]) -> np.ndarray:
        """The encoder on one decoded batch, checked for shape and finiteness."""
        f = self.encoder.encode(batch)
        if hasattr(f, "numpy") and not isinstance(f, np.ndarray):  # jt.Var
            f = f.numpy()
        f = np.array(f, dtype=np.float32, copy=True)  # Jittor may reuse its buffer
        if f.ndim != 2 or f.shape[0] != len(batch) or f.shape[1] != (self.dim or f.shape[1]):
            raise FeatureError(
                f"{self.name}: encoder returned shape {f.shape} for a batch of {len(batch)} "
                f"images (expected [{len(batch)}, {self.dim or 'd'}])"
            )
        bad = ~np.isfinite(f).all(axis=1)
        if bad.any():
            which = ", ".join(paths[j] for j in np.flatnonzero(bad)[:5])
            raise FeatureError(
                f"{self.name}: the encoder produced NaN/inf features for {int(bad.sum())} "
                f"image(s), e.g. {which}; check the weights and the preprocessing (fp16 overflow?)"
            )
        self.dim = f.shape[1]
        return f

    def save_chunk(self, c: int, feats: np.ndarray, failed: np.ndarray) -> None:
        write_atomic(self.chunk_path(c), lambda f: np.savez(f, features=feats, failed=failed))
        self.chunks[c] = (feats, failed)

    def finish(self) -> None:
        """Join the chunks into the entry's array and info files; remove the chunks."""
        if self.features is not None:
            return
        order = sorted(self.chunks)
        feats = np.concatenate([self.chunks[c][0] for c in order])
        self.failed = sorted(int(c * self.size + i) for c in order for i in self.chunks[c][1])
        write_atomic(self.array_path, lambda f: np.save(f, feats))
        info = {"key": self.key, "dim": int(feats.shape[1]), "failed": self.failed}
        write_json_atomic(self.info_path, info)
        shutil.rmtree(self.part_dir, ignore_errors=True)
        self.features = feats


class FeatureCache:
    """Feature cache rooted at ``root`` (``$OUT_DIR/cache``)."""

    def __init__(self, root: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.chunk_size = int(chunk_size)

    def get(
        self,
        encoders: Sequence[Encoder],
        paths: Sequence[str | os.PathLike],
        preprocess: Preprocess,
        views: Sequence[str] = ("orig",),
        *,
        batch_size: int = 64,
        workers: Optional[int] = None,
        progress: bool = True,
        seed: int = 0,
    ) -> list[FeatureSet]:
        """One FeatureSet per encoder: the features of ``paths`` for every view, from the cache
        or computed in one decoding pass shared by the encoders (``seed`` draws the "aug" view).
        FeatureError for non-finite or misshapen output."""
        views = tuple(dict.fromkeys(views))
        check_views(views)
        if not encoders:
            raise ValueError("FeatureCache.get: no encoders")
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError("FeatureCache.get: empty image list")
        common = {
            "format": FORMAT_VERSION,
            "preprocess": describe_preprocess(preprocess),
            "list": list_fingerprint(paths),
            "n": len(paths),
        }
        entries = []
        for enc in encoders:
            parts = {str(k): str(v) for k, v in sorted(enc.key_parts.items())}
            for v in views:
                key = {**common, "parts": parts, "view": v}
                if v == "aug":
                    key["seed"] = seed
                entries.append(_Entry(self.root, enc, v, key, self.chunk_size))
        todo = [e for e in entries if e.missing()]
        if todo:
            self.root.mkdir(parents=True, exist_ok=True)
            self._compute(todo, paths, preprocess, batch_size, workers, progress, seed)
        for e in entries:
            e.finish()
        out = []
        for i, enc in enumerate(encoders):
            mine = entries[i * len(views) : (i + 1) * len(views)]
            failed = sorted(set().union(*(e.failed for e in mine)))
            if failed:
                what = f"{len(failed)} of {len(paths)} image(s) could not be decoded"
                shown = preview([paths[j] for j in failed])
                log.warning("%s: %s (placeholder features): %s", enc.label, what, shown)
            out.append(FeatureSet({e.view: e.features for e in mine}, tuple(failed)))
        return out

    def _compute(
        self,
        entries: list[_Entry],
        paths: list[str],
        preprocess: Preprocess,
        batch_size: int,
        workers: Optional[int],
        progress: bool,
        seed: int,
    ) -> None:
        """Decode the chunks some entry misses, once, and encode them with every encoder that
        needs them, saving each entry's chunk as soon as it is encoded (an interruption loses at
        most the chunk in progress)."""
        missing = sorted(set().union(*(e.missing() for e in entries)))
        views = tuple(v for v in VIEWS if any(e.view == v for e in entries))
        nw = default_workers() if workers is None else workers
        names = " + ".join(dict.fromkeys(e.encoder.label for e in entries))
        n_todo = sum(entries[0].rows(c) for c in missing)
        threads = f"{nw} decoding thread(s)" if nw else "inline"
        log.info("%s: encoding %d image(s), each decoded once (%s)", names, n_todo, threads)
        size, n = self.chunk_size, len(paths)
        kw = dict(desc=names, unit="img", disable=not progress, dynamic_ncols=True)
        with tqdm(total=n, initial=n - n_todo, **kw) as bar:
            for c in missing:
                chunk_paths = paths[c * size : (c + 1) * size]
                needing = [e for e in entries if c not in e.chunks]
                rows: list[list[np.ndarray]] = [[] for _ in needing]
                failed: list[int] = []
                batches = iter_batches(
                    chunk_paths, preprocess, batch_size, workers, views=views, fill_failed=True,
                    seed=seed, offset=c * size,
                )  # fmt: skip
                for b in batches:
                    batch_paths = [chunk_paths[i] for i in b.indices]
                    for e, out in zip(needing, rows):
                        out.append(e.encode(b.images[e.view], batch_paths))
                    failed += b.failed
                    bar.update(len(b.indices))
                for e, out in zip(needing, rows):
                    e.save_chunk(c, np.concatenate(out), np.asarray(failed, np.int64))
