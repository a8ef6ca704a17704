"""Every choice of the cascade, made on the board-shaped validation (pipeline.validation); the
rules: docs/METHODS.md ("How train.sh chooses")."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from pipeline import scores, validation
from pipeline.scores import Choice
from pipeline.settings import CHOICE_OPTIONS, Settings

log = logging.getLogger(__name__)


@dataclass
class ValidationData:
    """The search's inputs: features by backbone, ``train``/``val`` also by flip averaging."""

    domains: np.ndarray  # [C] domain of every class id
    seen: np.ndarray
    unseen: np.ndarray  # real unseen class ids (no shot, no validation image)
    train: dict[bool, dict[str, np.ndarray]]
    train_aug: Optional[dict[str, np.ndarray]]
    train_y: np.ndarray
    val: dict[bool, dict[str, np.ndarray]]
    val_y: np.ndarray
    text: dict[str, dict[str, np.ndarray]]  # prompt set ("bare", "templates") -> T [d, C]
    expert_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # [n_val, K] on the rows of expert classes, else zeros: a non-expert image routed to the
    # expert is wrong whatever the expert says
    expert_logits: Optional[np.ndarray] = None
    aux: Optional[tuple[np.ndarray, np.ndarray]] = None  # ConvNeXt features (shots, val)


class Search:
    def __init__(
        self,
        data: ValidationData,
        settings: Settings,
        share: float,
        n_test: Optional[int],
        seed: int,
    ):
        """``share``: the expected unseen share of the test set."""
        self.d, self.s, self.share, self.n_test, self.seed = data, settings, share, n_test, seed
        self.fit_rows, rows = validation.split_fit_score(data.val_y)
        if not rows.size:
            log.warning(
                "no class has two validation images: the heads' epochs and the predicted score "
                "use the same images, so the prediction flatters (VAL_PER_CLASS >= 2 avoids it)"
            )
            rows = self.fit_rows
        self.cols = data.seen  # real unseen classes have no validation image: left out
        self._memo: dict[tuple, Any] = {}
        folds = validation.make_folds(
            data.val_y[rows], data.domains, data.seen, len(data.unseen), data.expert_ids,
            folds=settings.val_folds, share=share, batch=n_test or len(rows), seed=seed,
        )  # fmt: skip
        # Fold rows index the score rows; from here on they index the validation list.
        self.folds = [replace(f, rows=rows[f.rows]) for f in folds]
        self.unseen = [f.unseen for f in self.folds]

    def _once(self, key: tuple, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def shots(self, held: np.ndarray, choice: Choice, final: bool = False):
        """(shots of the seen classes but ``held`` in the choice's view, their mask, the fit rows
        of those classes (``final``: all their validation rows), those class ids)."""
        d = self.d
        seen_f = np.setdiff1d(d.seen, held)
        shots = d.train_aug if choice.lpp_views == "aug" else d.train[choice.flip_tta]
        m = np.isin(d.train_y, seen_f)
        rows = np.arange(d.val_y.size) if final else self.fit_rows
        fit_rows = rows[np.isin(d.val_y[rows], seen_f)]
        return {b: v[m] for b, v in shots.items()}, m, fit_rows, seen_f

    def heads(self, held: np.ndarray, choice: Choice, final: bool = False):
        """The seen-class head trained without the classes ``held``, and its class ids;
        ``final``: selected on every validation image, as train.py saves it."""
        d = self.d
        X, m, fit_rows, seen_f = self.shots(held, choice, final)

        def fit():
            T = {b: t[:, seen_f] for b, t in d.text["templates"].items()}
            Xv = {b: v[fit_rows] for b, v in d.val[choice.flip_tta].items()}
            aux = None if d.aux is None else (d.aux[0][m], d.aux[1][fit_rows])
            return scores.fit_head(
                choice.seen_head, self.s, X, np.searchsorted(seen_f, d.train_y[m]), T,
                (Xv, np.searchsorted(seen_f, d.val_y[fit_rows])), aux, self.seed,
            )  # fmt: skip

        key = ("heads", tuple(held), choice.seen_head, choice.flip_tta, choice.lpp_views, final)
        return self._once(key, fit), seen_f

    def stage1(self, f: int, choice: Choice) -> Optional[np.ndarray]:
        if not self.s.unseen_stage or not self.folds[f].held_out.size:
            return None
        rows, prompts = self.folds[f].rows, choice.inmap_prompts

        def compute():
            X = {b: v[rows] for b, v in self.d.val[choice.flip_tta].items()}
            T = {b: t[:, self.cols] for b, t in self.d.text[prompts].items()}
            return scores.stage1_scores(X, T, choice.stage1, self.s.inmap_fusion)

        return self._once(("stage1", f, choice.flip_tta, prompts, choice.stage1), compute)

    def run(self, choice: Choice) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The cascade ``choice`` on every fold: per fold, each image's top-1 correctness and
        answering stage. Seen images that stage 1 keeps are answered by the head of all seen
        classes, as on the test set (docs/METHODS.md)."""
        from pipeline.cascade import UNSEEN

        def compute():
            d, top1s, stages = self.d, [], []
            for f, fold in enumerate(self.folds):
                y = d.val_y[fold.rows]
                r = self._answer(choice, fold, fold.held_out, self.stage1(f, choice))
                top1, stage = r.top1 == y, r.stage
                if fold.held_out.size and choice.transclip == "off":
                    full = self._answer(choice, fold, np.zeros(0, np.int64), None)
                    kept = ~fold.unseen & (r.stage != UNSEEN)
                    top1 = np.where(kept, full.top1 == y, top1)
                    stage = np.where(kept, full.stage, stage)
                top1s.append(top1)
                stages.append(stage)
            return top1s, stages

        return self._once(("run", *choice.as_dict().values()), compute)

    def _answer(self, choice: Choice, fold: validation.Fold, held: np.ndarray, s1):
        """The cascade on a fold's rows with the head trained without ``held``."""
        d, cols = self.d, self.cols
        models, seen = self.heads(held, choice)
        val = d.val[choice.flip_tta]
        X = {b: v[fold.rows] for b, v in val.items()}
        aux = None if d.aux is None else d.aux[1][fold.rows]
        s2 = scores.head_scores(models, X, self.s.lpp_fusion, aux)
        if choice.transclip != "off":  # the shots as support, their classes' fit rows for gamma
            shots, m, fit_rows, _ = self.shots(held, choice)
            T = {b: t[:, cols] for b, t in d.text["templates"].items()}
            Xf = {b: v[fit_rows] for b, v in val.items()}
            s1, s2 = scores.apply_transclip(
                choice.transclip, X, T, (shots, np.searchsorted(cols, d.train_y[m])),
                (Xf, np.searchsorted(cols, d.val_y[fit_rows])), s1, s2, cols, seen,
                self.s.inmap_fusion,
            )  # fmt: skip
        logits = None if d.expert_logits is None else d.expert_logits[fold.rows].__getitem__
        return scores.run_stages(choice, s1, cols, s2, seen, d.expert_ids, logits)

    def estimate(self, choice: Choice) -> dict[str, float]:
        top1, _ = self.run(choice)
        return validation.predict(top1, self.unseen, self.share, self.n_test, self.seed)

    def search(self) -> dict[str, Any]:
        """The chosen configuration, its prediction and every candidate's (JSON-ready)."""
        current = Choice.challenge().pinned(self.s)
        candidates = []
        for name, options in CHOICE_OPTIONS.items():
            if getattr(self.s, name) is not None:
                continue  # pinned by the settings
            options = [o for o in options if o != "amu" or self.s.amu]
            base, _ = self.run(current)
            best, best_gain = getattr(current, name), 0.0
            for option in options:
                cand = replace(current, **{name: option})
                gain, se = validation.paired_gain(
                    self.run(cand)[0], base, self.unseen, self.share, self.seed
                )
                row = {"choice": name, "option": option, "estimate": self.estimate(cand)}
                row.update(gain=gain, se=se, baseline=option == getattr(current, name))
                candidates.append(row)
                log.info(
                    "%s=%s: predicted top-1 %.4f, gain %+.4f (se %.4f)",
                    name, option, row["estimate"]["value"], gain, se,
                )  # fmt: skip
                if gain > se and gain > best_gain:
                    best, best_gain = option, gain
            for row in candidates[-len(options) :]:  # this choice's
                row["chosen"] = row["option"] == best
            current = replace(current, **{name: best})
        return {
            "choice": current.as_dict(),
            "predicted_top1": self.estimate(current),
            "breakdown": self.breakdown(current),
            "candidates": candidates,
            "folds": [
                {
                    "held_out": f.held_out.tolist(),
                    "images": int(f.rows.size),
                    "held_out_images": int(f.unseen.sum()),
                }
                for f in self.folds
            ],  # fmt: skip
            "unseen_share": self.share,
            "n_test": self.n_test,
        }

    def breakdown(self, choice: Choice) -> dict[str, Any]:
        """Predicted top-1 per domain of the true class (held-out images: the unseen domain) and
        per answering stage, with the share of images each stage answers."""
        from pipeline.cascade import STAGE_NAMES

        top1, stage = map(np.concatenate, self.run(choice))
        rows = np.concatenate([f.rows for f in self.folds])
        true_domains = self.d.domains[self.d.val_y[rows]]
        domains = np.where(np.concatenate(self.unseen), "unseen (held out)", true_domains)
        out = {"per_domain": {str(d): float(top1[domains == d].mean()) for d in np.unique(domains)}}
        out["per_stage"] = {
            name: {"share": float((stage == i).mean()),
                   "top1": float(top1[stage == i].mean()) if (stage == i).any() else None}
            for i, name in enumerate(STAGE_NAMES)
        }  # fmt: skip
        return out
