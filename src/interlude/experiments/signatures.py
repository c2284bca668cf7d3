"""Failure signatures: the ways the InterLUDE paper says semi-supervised runs go wrong, named.

A run's ``metrics.jsonl`` (and, for a group of seeds, their final accuracies) is checked against
a few rules; each rule that fires returns a :class:`Signature` whose one-line message carries the
numbers behind it, so a user reads "the DC term is 80% of the loss" instead of having to find it
in the curves. ``interlude report`` lists them per variant and seed; ``interlude train`` (any
:func:`interlude.train.run`) logs a finished run's signatures as warnings.

Records are the ones :class:`~interlude.train.logger.RunLogger` writes: ``kind`` "train" (window
means of ``loss``, ``loss_unsup``, ``loss_dc``, ``mask_rate``; ``pl_counts`` summed over the
window), "eval" (``test|val|labeled/<model>/top1`` as fractions) and "data" (``labeled_counts``).
A rule whose inputs are missing (an older run, a supervised run, too few log windows) is not
applicable and stays silent: a signature is only claimed from numbers that were logged.

Pure Python (no torch), so reports stay cheap.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

Record = Mapping[str, Any]

SEED_SD_POINTS = 1.0
"""Seed spread: a variant's seed-to-seed sample sd of the final test top-1, in percentage points,
above which its seeds disagree more than the differences papers report between methods."""

ACC_DROP_POINTS = 2.0
"""Over-regularisation: how far (percentage points) the labeled accuracy must have fallen from its
best eval to the last one; smaller dips are eval noise on a small labeled set."""

UNSUP_RISE = 0.05
"""Over-regularisation: relative rise of ``loss_unsup`` (+ ``loss_dc``) between the windows before
the best and the last eval (0.05 = rose by more than 5%); a flat unlabeled loss means the
labeled accuracy fell for another reason."""

LOSS_WINDOW = 3
"""Train records (log windows) up to an eval step whose mean is the unlabeled loss at that eval."""

TAIL_FRACTION = 0.2
"""The "last part" of training the mask, DC and pseudo-label rules look at: the last 20% of the
train records (at least two)."""

MIN_TRAIN_RECORDS = 5
"""Fewer train records than this and "the last 20%" is no tail: the tail rules do not apply."""

MASK_RISE = 0.05
"""Mask rate still climbing: rise of ``mask_rate`` over the tail (least-squares slope times the
tail's step span) above which the pseudo-labels had not converged when training stopped."""

MASK_FLOOR = 0.05
"""Mask rate stuck near zero: mean ``mask_rate`` over the tail below which almost no unlabeled
image passes the confidence threshold, so the unlabeled data barely trains the model."""

DC_SHARE = 0.5
"""DC term dominating: ``lambda_dc * loss_dc`` as a share of ``loss`` (tail means) above which the
delta-consistency term, not classification, drives the updates."""

PL_TV = 0.2
"""Pseudo-label skew: total-variation distance between the tail's pseudo-label class histogram and
the labeled class prior above which the pseudo-labels favour some classes (0 = same, 1 = disjoint)."""


@dataclass(frozen=True)
class Thresholds:
    """The rules' thresholds (defaults: the module constants); ``interlude report --threshold``."""

    seed_sd: float = SEED_SD_POINTS
    acc_drop: float = ACC_DROP_POINTS
    unsup_rise: float = UNSUP_RISE
    mask_rise: float = MASK_RISE
    mask_floor: float = MASK_FLOOR
    dc_share: float = DC_SHARE
    pl_tv: float = PL_TV

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_values(self, values: Mapping[str, float]) -> Thresholds:
        """A copy with ``values`` set; a name that is not a threshold is a ``KeyError``."""
        unknown = sorted(set(values) - set(self.names()))
        if unknown:
            raise KeyError(unknown[0])
        return replace(self, **values)


DEFAULT = Thresholds()


@dataclass(frozen=True)
class Signature:
    """One failure signature found: which rule, a one-line message with the numbers, the numbers."""

    rule: str
    message: str
    numbers: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


# --- entry points -------------------------------------------------------------------------------


def run_signatures(records: Sequence[Record], config: Mapping[str, Any] | None = None,
                   model: str | None = None, thresholds: Thresholds = DEFAULT) -> list[Signature]:
    """The signatures one run shows, from its metrics records and its config.

    ``config`` is the run's config (nested as in config.yaml, or dotted keys); ``model`` the
    evaluated model to read (``ema``/``raw``; default: ema when it was evaluated).
    """
    records = [r for r in records if isinstance(r, Mapping) and isinstance(r.get("step"), int)]
    model = model or _default_model(records)
    found = [
        over_regularisation(records, model, thresholds),
        mask_rate_climbing(records, thresholds),
        mask_rate_stuck(records, thresholds),
        dc_dominating(records, _config_value(config or {}, "algorithm.lambda_dc"), thresholds),
        pseudo_label_skew(records, thresholds),
    ]
    return [s for s in found if s is not None]


def group_signatures(final_top1: Mapping[Any, float | None],
                     thresholds: Thresholds = DEFAULT) -> list[Signature]:
    """The signatures of a group of seeds of one variant: ``final_top1`` maps seed -> final test
    top-1 (a fraction; None where a run did not record it)."""
    found = [seed_spread(final_top1, thresholds)]
    return [s for s in found if s is not None]


def run_dir_signatures(run_dir: Path, model: str | None = None,
                       thresholds: Thresholds = DEFAULT) -> list[Signature]:
    """:func:`run_signatures` of a run directory (its ``metrics.jsonl`` and ``config.yaml``)."""
    from interlude.config import read_yaml
    from interlude.train.logger import read_jsonl

    config_path = run_dir / "config.yaml"
    config = read_yaml(config_path) if config_path.is_file() else {}
    return run_signatures(read_jsonl(run_dir / "metrics.jsonl"),
                          config if isinstance(config, Mapping) else {}, model, thresholds)


# --- group rules --------------------------------------------------------------------------------


def seed_spread(final_top1: Mapping[Any, float | None],
                thresholds: Thresholds = DEFAULT) -> Signature | None:
    """High variance across seeds: sample sd of the final test top-1 above ``seed_sd`` points."""
    values = {seed: v for seed, v in final_top1.items() if _number(v) is not None}
    if len(values) < 2:
        return None
    sd = 100 * statistics.stdev(values.values())
    if sd <= thresholds.seed_sd:
        return None
    per_seed = ", ".join(f"{seed}: {100 * v:.1f}" for seed, v in values.items())
    return Signature("seed_spread", (
        f"high variance across seeds: final test top-1 has a seed-to-seed sd of {sd:.1f} pts "
        f"(> {thresholds.seed_sd:g}) over {len(values)} seeds ({per_seed})"
    ), {"sd_points": sd, "seeds": len(values), "min": 100 * min(values.values()),
        "max": 100 * max(values.values())})


# --- run rules ----------------------------------------------------------------------------------


def over_regularisation(records: Sequence[Record], model: str = "ema",
                        thresholds: Thresholds = DEFAULT) -> Signature | None:
    """Labeled accuracy falling while the unlabeled losses rise: the labeled (or val) top-1 lost
    more than ``acc_drop`` points from its best eval to the last one while ``loss_unsup``
    (+ ``loss_dc``) rose by more than ``unsup_rise`` between the windows before those evals."""
    evals = _of_kind(records, "eval")
    key = next((k for k in (f"val/{model}/top1", f"labeled/{model}/top1")
                if any(_number(r.get(k)) is not None for r in evals)), None)
    if key is None:
        return None
    curve = [(r["step"], float(r[key])) for r in evals if _number(r.get(key)) is not None]
    if len(curve) < 2:
        return None
    best_step, best = max(curve, key=lambda point: point[1])  # the first of equal bests
    last_step, last = curve[-1]
    drop = 100 * (best - last)
    if drop <= thresholds.acc_drop:
        return None
    train = _of_kind(records, "train")
    name = "loss_unsup + loss_dc" if any(_number(r.get("loss_dc")) is not None for r in train) \
        else "loss_unsup"
    loss_at_best, loss_at_last = _unsup_loss_before(train, best_step), _unsup_loss_before(train, last_step)
    if loss_at_best is None or loss_at_last is None:
        return None
    if loss_at_last <= loss_at_best * (1 + thresholds.unsup_rise):
        return None
    rise = (loss_at_last / loss_at_best - 1) if loss_at_best > 0 else math.inf
    return Signature("over_regularisation", (
        f"labeled accuracy falling while unlabeled losses rise (over-regularisation): {key} fell "
        f"{drop:.1f} pts (> {thresholds.acc_drop:g}) from its best {100 * best:.1f}% at step "
        f"{best_step} to {100 * last:.1f}% at step {last_step}, while {name} rose from "
        f"{loss_at_best:.3f} to {loss_at_last:.3f} ({rise:+.0%}, > +{thresholds.unsup_rise:.0%})"
    ), {"drop_points": drop, "best": 100 * best, "best_step": best_step, "last": 100 * last,
        "last_step": last_step, "unsup_at_best": loss_at_best, "unsup_at_last": loss_at_last})


def mask_rate_climbing(records: Sequence[Record],
                       thresholds: Thresholds = DEFAULT) -> Signature | None:
    """Mask rate still climbing at the last step: over the tail, the least-squares line through
    ``mask_rate`` rises by more than ``mask_rise`` (under-trained / slow convergence)."""
    points = _tail_points(records, "mask_rate")
    if points is None:
        return None
    first, last = points[0][0], points[-1][0]
    rise = _slope(points) * (last - first)
    if rise <= thresholds.mask_rise:
        return None
    return Signature("mask_rate_climbing", (
        f"mask rate still climbing at the last step (under-trained, slow convergence): mask_rate "
        f"rose by {rise:.3f} (> {thresholds.mask_rise:g}, fitted line) over the last "
        f"{TAIL_FRACTION:.0%} of training (steps {first}-{last}), ending at {points[-1][1]:.3f}"
    ), {"rise": rise, "first_step": first, "last_step": last, "last_mask_rate": points[-1][1]})


def mask_rate_stuck(records: Sequence[Record],
                    thresholds: Thresholds = DEFAULT) -> Signature | None:
    """Mask rate stuck near zero: mean ``mask_rate`` over the tail below ``mask_floor``."""
    points = _tail_points(records, "mask_rate")
    if points is None:
        return None
    mean = statistics.fmean(v for _, v in points)
    if mean >= thresholds.mask_floor:
        return None
    first, last = points[0][0], points[-1][0]
    return Signature("mask_rate_stuck", (
        f"mask rate stuck near zero: mean mask_rate {mean:.3f} (< {thresholds.mask_floor:g}) over "
        f"the last {TAIL_FRACTION:.0%} of training (steps {first}-{last}): almost no unlabeled "
        "image passes the confidence threshold"
    ), {"mean_mask_rate": mean, "first_step": first, "last_step": last})


def dc_dominating(records: Sequence[Record], lambda_dc: Any,
                  thresholds: Thresholds = DEFAULT) -> Signature | None:
    """DC term dominating: ``lambda_dc * mean(loss_dc)`` over the tail is more than ``dc_share``
    of ``mean(loss)`` (means of the tail windows; a ratio of means, so a window whose loss is
    near zero does not blow it up)."""
    lam = _number(lambda_dc)
    tail = _tail(records)
    if lam is None or lam <= 0 or tail is None:
        return None
    pairs = [(float(r["loss_dc"]), float(r["loss"])) for r in tail
             if _number(r.get("loss_dc")) is not None and _number(r.get("loss")) is not None]
    if not pairs:
        return None
    loss_dc = statistics.fmean(p[0] for p in pairs)
    loss = statistics.fmean(p[1] for p in pairs)
    if loss <= 0:
        return None
    share = lam * loss_dc / loss
    if share <= thresholds.dc_share:
        return None
    first, last = tail[0]["step"], tail[-1]["step"]
    return Signature("dc_dominating", (
        f"DC term dominating: lambda_dc * loss_dc = {lam:g} * {loss_dc:.3f} = {lam * loss_dc:.3f} "
        f"is {share:.0%} (> {thresholds.dc_share:.0%}) of loss {loss:.3f} on average over the "
        f"last {TAIL_FRACTION:.0%} of training (steps {first}-{last})"
    ), {"share": share, "lambda_dc": lam, "loss_dc": loss_dc, "loss": loss})


def pseudo_label_skew(records: Sequence[Record],
                      thresholds: Thresholds = DEFAULT) -> Signature | None:
    """Pseudo-label class histogram far from the labeled prior: total-variation distance between
    the normalised ``pl_counts`` summed over the tail and the ``labeled_counts`` prior above
    ``pl_tv``; names the most over- and under-predicted classes."""
    prior = next((_counts(r.get("labeled_counts")) for r in _of_kind(records, "data")
                  if _counts(r.get("labeled_counts")) is not None), None)
    tail = _tail(records)
    if prior is None or tail is None or sum(prior) <= 0:
        return None
    windows = [c for c in (_counts(r.get("pl_counts")) for r in tail) if c is not None]
    if not windows or any(len(c) != len(prior) for c in windows):
        return None
    totals = [sum(column) for column in zip(*windows, strict=True)]
    n = sum(totals)
    if n <= 0:  # no confident pseudo-label: mask_rate_stuck says so
        return None
    p = [c / n for c in totals]
    q = [c / sum(prior) for c in prior]
    tv = 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))
    if tv <= thresholds.pl_tv:
        return None
    gap = [a - b for a, b in zip(p, q, strict=True)]
    over, under = gap.index(max(gap)), gap.index(min(gap))
    first, last = tail[0]["step"], tail[-1]["step"]
    return Signature("pseudo_label_skew", (
        f"pseudo-label class histogram far from the labeled prior: total-variation distance "
        f"{tv:.3f} (> {thresholds.pl_tv:g}) between the {n:g} confident pseudo-labels of the last "
        f"{TAIL_FRACTION:.0%} of training (steps {first}-{last}) and the labeled classes; most "
        f"over-predicted: class {over} ({p[over]:.1%} of pseudo-labels vs {q[over]:.1%} labeled), "
        f"most under-predicted: class {under} ({p[under]:.1%} vs {q[under]:.1%})"
    ), {"tv": tv, "pseudo_labels": n, "over_class": over, "over_share": p[over],
        "over_prior": q[over], "under_class": under, "under_share": p[under],
        "under_prior": q[under]})


# --- helpers ------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _counts(value: Any) -> list[float] | None:
    """A list of non-negative counts, or None (missing or not counts: the rule does not apply)."""
    if not isinstance(value, list) or not value:
        return None
    numbers = [_number(v) for v in value]
    if any(v is None or v < 0 for v in numbers):
        return None
    return numbers  # type: ignore[return-value]


def _of_kind(records: Sequence[Record], kind: str) -> list[Record]:
    """The records of one kind, by step (records without an integer step are skipped)."""
    kept = (r for r in records if r.get("kind") == kind and isinstance(r.get("step"), int))
    return sorted(kept, key=lambda r: r["step"])


def _tail(records: Sequence[Record]) -> list[Record] | None:
    """The last TAIL_FRACTION of the train records (at least two); None for too short a log."""
    train = _of_kind(records, "train")
    if len(train) < MIN_TRAIN_RECORDS:
        return None
    return train[-max(2, math.ceil(TAIL_FRACTION * len(train))):]


def _tail_points(records: Sequence[Record], key: str) -> list[tuple[int, float]] | None:
    """(step, value) of ``key`` over the tail; None when fewer than two windows logged it."""
    tail = _tail(records)
    points = [(r["step"], float(r[key])) for r in tail or [] if _number(r.get(key)) is not None]
    return points if len(points) >= 2 else None


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of value against step (0 when all steps are equal)."""
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _unsup_loss_before(train: list[Record], step: int) -> float | None:
    """Mean of ``loss_unsup`` (+ ``loss_dc`` where logged) over the last LOSS_WINDOW train records
    at or before ``step``: the unlabeled loss the model had when it was evaluated there."""
    values = [float(r["loss_unsup"]) + (_number(r.get("loss_dc")) or 0.0)
              for r in train if r["step"] <= step and _number(r.get("loss_unsup")) is not None]
    return statistics.fmean(values[-LOSS_WINDOW:]) if values else None


def _default_model(records: Sequence[Record]) -> str:
    """``ema`` when the run evaluated an EMA model, else ``raw``."""
    for r in records:
        if r.get("kind") == "eval" and any(str(k).split("/")[1:2] == ["ema"] for k in r):
            return "ema"
    return "raw"


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    """``key`` (dotted) from a dotted or a nested config; None when absent."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
