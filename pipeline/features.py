"""The feature cache: every image list is encoded once per backbone, preprocessing and view.

Layout under the cache root (``$OUT_DIR/cache``)::

    fingerprints.json                  sha256 of weight files, keyed by (path, size, mtime)
    <label>-<key hash>/                one entry per (key parts, preprocessing, image list)
        key.json                       the full key, for humans and for checking
        orig/ flip/                    one folder per view
            shard_00000.npz ...        features float32 [<=shard_size, d], failed local indices,
                                       and the entry key; written atomically
            manifest.json              written last: format version, key, n, dim, failed ids,
                                       sha256 of every shard

The key is the JSON of FORMAT_VERSION, the caller's ``key_parts`` (backbone name, weight
fingerprint, ...), the preprocessing's ``describe()`` string and a fingerprint of the image list
(absolute paths, sizes and modification times, in order). Anything that changes the features
changes the key, and so the folder. An interrupted extraction leaves finished shards behind and
the next run computes only the missing ones; a shard that does not load, has the wrong shape,
belongs to another key or fails its manifest checksum is recomputed with a warning.
"""

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

from pipeline.fileio import write_atomic, write_json_atomic
from pipeline.images import (
    VIEWS,
    Preprocess,
    default_workers,
    iter_view_batches,
    resolve_backend,
)

log = logging.getLogger(__name__)

# Bump when the shard/manifest layout or anything else that changes stored features changes.
FORMAT_VERSION = 1
SHARD_SIZE = 512

EncodeFn = Callable[[np.ndarray], Any]


class FeatureError(RuntimeError):
    """Feature extraction produced unusable output (non-finite values, wrong shape)."""


@dataclass(frozen=True)
class FeatureSet:
    """Features of one image list: ``features[view]`` is float32 [n, d] (row i = image i);
    ``failed`` lists the images that could not be decoded (their rows are the features of a
    mid-grey placeholder: finite, but carrying no evidence)."""

    features: dict[str, np.ndarray]
    failed: tuple[int, ...]
    key: str
    directory: Path

    def __getitem__(self, view: str) -> np.ndarray:
        return self.features[view]

    @property
    def n(self) -> int:
        return len(next(iter(self.features.values())))

    @property
    def dim(self) -> int:
        return next(iter(self.features.values())).shape[1]

    @property
    def ok(self) -> np.ndarray:
        """Boolean [n]: True where the image was decoded."""
        mask = np.ones(self.n, bool)
        mask[list(self.failed)] = False
        return mask


class EncoderJob(NamedTuple):
    """One encoder of ``FeatureCache.get_or_compute_many``: what identifies it in the key
    (``key_parts``), the encode function and the entry's label."""

    key_parts: Mapping[str, Any]
    encode_fn: EncodeFn
    label: Optional[str] = None


@dataclass
class _Entry:
    """One cache entry while it is being read or filled."""

    job: EncoderJob
    key: dict
    keyhash: str
    directory: Path
    name: str
    rows: list[int]
    # have[view][shard] = (features, failed local indices)
    have: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]
    dim: Optional[int]
    missing: list[int]


# ----------------------------------------------------------------------------- fingerprints


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the ordered (absolute path, size, mtime) of every image.

    Absolute paths, so the demo dataset and the real one never share an entry even where their
    relative names coincide; size and mtime, so replaced images are re-encoded. A missing file
    is fingerprinted as such (it will be reported as failed).
    """
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
    if callable(describe):
        return str(describe())
    # Without describe() two different preprocessings of the same type would share an entry.
    raise TypeError(
        f"preprocess {preprocess!r} has no describe() method; the feature cache needs it to "
        "tell preprocessings apart"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")[:60] or "entry"


def _to_numpy(x: Any) -> np.ndarray:
    # jt.Var (and torch tensors) expose .numpy(); copy because Jittor may alias its buffer.
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.array(x, dtype=np.float32, copy=True)


# ----------------------------------------------------------------------------- the cache


class FeatureCache:
    """Feature cache rooted at ``root`` (see the module docstring for the layout)."""

    def __init__(
        self, root: str | os.PathLike, shard_size: int = SHARD_SIZE, backend: str = "thread"
    ) -> None:
        """``backend``: how images are decoded when features must be computed ("thread",
        "process" or "auto", see ``pipeline.images.resolve_backend``)."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.shard_size = int(shard_size)
        self.backend = backend

    # ------------------------------------------------------------------ weights fingerprint
    def fingerprint(self, weights: str | os.PathLike) -> str:
        """Full sha256 of a weight file, remembered by (absolute path, size, mtime) in
        ``fingerprints.json`` so each file is hashed once."""
        p = Path(weights)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: weight file not found") from None
        ap = str(p.resolve())
        book_path = self.root / "fingerprints.json"
        try:
            book = json.loads(book_path.read_text())
        except (OSError, ValueError):
            book = {}
        rec = book.get(ap)
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec["sha256"]
        digest = _sha256_file(p)
        book[ap] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(book_path, book)
        return digest

    # ------------------------------------------------------------------ keys
    def make_key(
        self,
        key_parts: Mapping[str, Any],
        paths: Sequence[str | os.PathLike],
        preprocess: Preprocess,
    ) -> dict:
        """The full key of an entry (JSON-serialisable)."""
        return {
            "format": FORMAT_VERSION,
            "parts": {str(k): str(v) for k, v in sorted(key_parts.items())},
            "preprocess": describe_preprocess(preprocess),
            "list": list_fingerprint(paths),
            "n": len(paths),
            "shard_size": self.shard_size,
        }

    @staticmethod
    def key_hash(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def entry_dir(self, key: dict, label: Optional[str] = None) -> Path:
        label = label or "-".join(key["parts"].get(k, "") for k in ("backbone", "list")) or "entry"
        return self.root / f"{_slug(label)}-{self.key_hash(key)[:16]}"

    # ------------------------------------------------------------------ shards
    def _shard_path(self, vdir: Path, s: int) -> Path:
        return vdir / f"shard_{s:05d}.npz"

    def _load_shard(
        self, path: Path, keyhash: str, rows: int, dim: Optional[int]
    ) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(features, failed local indices) or None when absent/unusable (then deleted)."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = np.array(z["features"], np.float32)
                failed = np.array(z["failed"], np.int64)
                owner = str(z["key"])
            problem = None
            if owner != keyhash:
                problem = "written for another cache key"
            elif feats.ndim != 2 or feats.shape[0] != rows or (dim and feats.shape[1] != dim):
                problem = f"shape {feats.shape}, expected ({rows}, {dim or 'd'})"
            elif not np.isfinite(feats).all():
                problem = "non-finite values"
            elif failed.size and (failed.min() < 0 or failed.max() >= rows):
                problem = "failed indices out of range"
        except Exception as e:  # noqa: BLE001 - any unreadable shard is simply recomputed
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem:
            log.warning("feature cache: %s is corrupt (%s); recomputing it", path, problem)
            path.unlink(missing_ok=True)
            return None
        return feats, failed

    def _write_shard(self, path: Path, feats: np.ndarray, failed: np.ndarray, keyhash: str) -> None:
        # The manifest's checksums are taken when it is written (``_finish``), once per shard.
        write_atomic(
            path,
            lambda f: np.savez(f, features=feats, failed=failed, key=np.array(keyhash)),
        )

    # ------------------------------------------------------------------ main entry point
    def get_or_compute(
        self,
        key_parts: Mapping[str, Any],
        paths: Sequence[str | os.PathLike],
        encode_fn: EncodeFn,
        preprocess: Preprocess,
        batch_size: int = 64,
        workers: Optional[int] = None,
        views: Sequence[str] = ("orig",),
        *,
        label: Optional[str] = None,
        draft_min_side: Optional[int] = None,
        progress: bool = True,
    ) -> FeatureSet:
        """Features of ``paths`` for every view, from the cache or computed and stored.

        ``key_parts``: what identifies the encoder, e.g. ``{"backbone": "clip-vit-b32",
        "weights": cache.fingerprint(path), "list": "test"}`` (add anything else that changes
        the output). ``encode_fn(batch float32 [B,3,H,W]) -> [B,d]`` (numpy or anything with
        ``.numpy()``). ``views``: "orig" and/or "flip". Images that fail to decode are encoded
        as a grey placeholder and listed in ``FeatureSet.failed``; the caller decides whether to
        drop them. Raises FeatureError when the encoder returns non-finite values or a wrong
        shape.
        """
        (fs,) = self.get_or_compute_many(
            [EncoderJob(key_parts, encode_fn, label)],
            paths,
            preprocess,
            batch_size,
            workers,
            views,
            draft_min_side=draft_min_side,
            progress=progress,
        )
        return fs

    def get_or_compute_many(
        self,
        jobs: Sequence[EncoderJob],
        paths: Sequence[str | os.PathLike],
        preprocess: Preprocess,
        batch_size: int = 64,
        workers: Optional[int] = None,
        views: Sequence[str] = ("orig",),
        *,
        draft_min_side: Optional[int] = None,
        progress: bool = True,
    ) -> list[FeatureSet]:
        """``get_or_compute`` for several encoders that share one preprocessing: each image is
        decoded once and every batch goes through every encoder whose entry misses it.

        Each job keeps its own entry, exactly as ``get_or_compute`` would write it, so the
        entries are interchangeable with single-encoder runs. Decoding dominates nothing on a
        CPU, but a Jittor call holds the GIL (docs/PERFORMANCE.md), so on a GPU a second
        decoding pass is time the encoders simply wait.
        """
        views = tuple(dict.fromkeys(views))
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ValueError(f"unknown views {bad or views}; choose from {VIEWS}")
        if not jobs:
            raise ValueError("get_or_compute_many: no encoder jobs")
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError("get_or_compute: empty image list")
        entries = [self._open_entry(job, paths, preprocess, views) for job in jobs]
        todo = [e for e in entries if e.missing]
        if todo:
            self._compute(
                todo, paths, views, preprocess, batch_size, workers, draft_min_side, progress
            )
        return [self._finish(e, paths, views) for e in entries]

    # ------------------------------------------------------------------ helpers
    def _check_entry_key(self, entry: Path, key: dict) -> None:
        """An entry folder whose key.json disagrees (truncated-hash collision, a copied folder,
        another format version) is wiped and rebuilt."""
        kp = entry / "key.json"
        if kp.exists():
            try:
                old = json.loads(kp.read_text())
            except (OSError, ValueError):
                old = None
            if old == key:
                return
            log.warning("feature cache: %s holds another key; rebuilding it", entry)
            for child in entry.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        write_json_atomic(kp, key)

    def _read_manifest(self, vdir: Path, key: dict) -> Optional[dict]:
        mp = vdir / "manifest.json"
        if not mp.exists():
            return None
        try:
            m = json.loads(mp.read_text())
            ok = (
                m.get("format") == FORMAT_VERSION
                and m.get("key") == key
                and len(m.get("shards", ())) == (key["n"] + self.shard_size - 1) // self.shard_size
                and isinstance(m.get("dim"), int)
            )
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            log.warning("feature cache: %s is stale or unreadable; revalidating shards", mp)
            mp.unlink(missing_ok=True)
            return None
        return m

    def _open_entry(
        self, job: EncoderJob, paths: list[str], preprocess: Preprocess, views: tuple[str, ...]
    ) -> _Entry:
        """Key, folder and the shards already there (manifest first, then loose shards)."""
        n = len(paths)
        key = self.make_key(job.key_parts, paths, preprocess)
        keyhash = self.key_hash(key)
        entry = self.entry_dir(key, job.label)
        entry.mkdir(parents=True, exist_ok=True)
        self._check_entry_key(entry, key)
        num_shards = (n + self.shard_size - 1) // self.shard_size
        rows = [min(self.shard_size, n - s * self.shard_size) for s in range(num_shards)]
        have: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        dim: Optional[int] = None
        for v in views:
            vdir = entry / v
            vdir.mkdir(exist_ok=True)
            manifest = self._read_manifest(vdir, key)
            if manifest is not None:
                dim = dim or manifest["dim"]
            have[v] = {}
            for s in range(num_shards):
                path = self._shard_path(vdir, s)
                if manifest is not None and path.exists():
                    if _sha256_file(path) != manifest["shards"][s]:
                        log.warning("feature cache: %s fails its checksum; recomputing it", path)
                        path.unlink()
                        manifest = None
                        (vdir / "manifest.json").unlink(missing_ok=True)
                        continue
                got = self._load_shard(path, keyhash, rows[s], dim)
                if got is not None:
                    dim = dim or got[0].shape[1]
                    have[v][s] = got
            if manifest is not None and len(have[v]) < num_shards:
                (vdir / "manifest.json").unlink(missing_ok=True)
        missing = [s for s in range(num_shards) if any(s not in have[v] for v in views)]
        name = job.label or entry.name
        return _Entry(job, key, keyhash, entry, name, rows, have, dim, missing)

    def _finish(self, e: _Entry, paths: list[str], views: tuple[str, ...]) -> FeatureSet:
        """Assemble the views and (re)write their manifests where anything changed."""
        n, num_shards = len(paths), len(e.rows)
        out: dict[str, np.ndarray] = {}
        failed_all: set[int] = set()
        for v in views:
            vdir = e.directory / v
            feats = np.concatenate([e.have[v][s][0] for s in range(num_shards)])
            failed = sorted(
                int(s * self.shard_size + i) for s in range(num_shards) for i in e.have[v][s][1]
            )
            failed_all.update(failed)
            if not (vdir / "manifest.json").exists() or e.missing:
                write_json_atomic(
                    vdir / "manifest.json",
                    {
                        "format": FORMAT_VERSION,
                        "key": e.key,
                        "key_hash": e.keyhash,
                        "view": v,
                        "n": n,
                        "dim": int(feats.shape[1]),
                        "failed": failed,
                        "shards": [
                            _sha256_file(self._shard_path(vdir, s)) for s in range(num_shards)
                        ],
                    },
                )
            out[v] = feats
        if failed_all:
            log.warning(
                "%s: %d of %d image(s) could not be decoded (placeholder features): %s%s",
                e.name,
                len(failed_all),
                n,
                ", ".join(paths[i] for i in sorted(failed_all)[:5]),
                " ..." if len(failed_all) > 5 else "",
            )
        return FeatureSet(out, tuple(sorted(failed_all)), e.keyhash, e.directory)

    def _compute(
        self,
        entries: list[_Entry],
        paths: list[str],
        views: tuple[str, ...],
        preprocess: Preprocess,
        batch_size: int,
        workers: Optional[int],
        draft_min_side: Optional[int],
        progress: bool,
    ) -> None:
        """Decode the images of every shard some entry misses, once, and encode each batch with
        every entry's encoder, writing each entry's shard as soon as it is complete (so an
        interruption loses at most one shard per entry); fills ``have`` of each entry."""
        missing = sorted(set().union(*(e.missing for e in entries)))
        rows = entries[0].rows
        need = tuple(v for v in views if any(s not in e.have[v] for e in entries for s in missing))
        positions = np.concatenate(
            [np.arange(s * self.shard_size, s * self.shard_size + rows[s]) for s in missing]
        )
        asm = [_ShardAssembler(self, e, missing, need) for e in entries]
        backend = resolve_backend(self.backend)
        nw = default_workers() if workers is None else workers
        log.info(
            "%s: encoding %d image(s), each decoded once (%s)",
            " + ".join(e.name for e in entries),
            len(positions),
            f"{nw} {backend} worker(s)" if nw else "inline",
        )
        bar = tqdm(
            total=len(paths),
            initial=len(paths) - len(positions),
            desc=" + ".join(e.name for e in entries),
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            batches = iter_view_batches(
                [paths[i] for i in positions],
                preprocess,
                batch_size,
                workers,
                views=need,
                fill_failed=True,
                draft_min_side=draft_min_side,
                backend=backend,
            )
            for batch in batches:
                local = positions[batch.indices]
                failed_set = set(int(positions[i]) for i in batch.failed)
                for a in asm:
                    feats = {v: a.encode(batch.images[v], local, v, paths) for v in need}
                    a.feed(local, feats, failed_set)
                bar.update(len(local))
        finally:
            bar.close()


class _ShardAssembler:
    """Collects one entry's encoded rows in image order and writes each shard when complete."""

    def __init__(self, cache: FeatureCache, e: _Entry, shards: list[int], views: tuple[str, ...]):
        self.cache, self.e, self.views = cache, e, views
        self.shards = iter(shards)
        self.cur = next(self.shards)
        self.filled = 0
        self.buf: dict[str, list[np.ndarray]] = {v: [] for v in views}
        self.buf_failed: list[int] = []

    def encode(self, images: np.ndarray, local: np.ndarray, view: str, paths: list[str]):
        e = self.e
        f = _to_numpy(e.job.encode_fn(images))
        if f.ndim != 2 or f.shape[0] != len(local) or (e.dim and f.shape[1] != e.dim):
            raise FeatureError(
                f"{e.name}: encoder returned shape {f.shape} for a batch of "
                f"{len(local)} images (expected [{len(local)}, {e.dim or 'd'}])"
            )
        bad = ~np.isfinite(f).all(axis=1)
        if bad.any():
            which = ", ".join(paths[i] for i in local[bad][:5])
            raise FeatureError(
                f"{e.name} ({view} view): the encoder produced NaN/inf features for "
                f"{int(bad.sum())} image(s), e.g. {which}; check the weights and "
                "the preprocessing (fp16 overflow?)"
            )
        e.dim = f.shape[1]
        return f

    def feed(self, local: np.ndarray, feats: dict[str, np.ndarray], failed: set[int]) -> None:
        e, size = self.e, self.cache.shard_size
        start = 0
        while start < len(local):
            # Rows of this batch that belong to the current shard.
            take = min(len(local) - start, e.rows[self.cur] - self.filled)
            for v in self.views:
                self.buf[v].append(feats[v][start : start + take])
            base = self.cur * size
            self.buf_failed.extend(
                int(g) - base for g in local[start : start + take] if int(g) in failed
            )
            self.filled += take
            start += take
            if self.filled == e.rows[self.cur]:
                self._flush()

    def _flush(self) -> None:
        e = self.e
        failed_arr = np.asarray(self.buf_failed, np.int64)
        for v in self.views:
            if self.cur in e.have[v]:
                continue
            arr = np.concatenate(self.buf[v])
            path = self.cache._shard_path(e.directory / v, self.cur)
            self.cache._write_shard(path, arr, failed_arr, e.keyhash)
            e.have[v][self.cur] = (arr, failed_arr)
        self.buf = {v: [] for v in self.views}
        self.buf_failed = []
        self.filled = 0
        self.cur = next(self.shards, -1)
