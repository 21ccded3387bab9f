"""Statistical promotion gates: challenger − champion differences with paired block-bootstrap intervals.

Both models are scored on the same rows and every bootstrap draw resamples the same whole weeks
(or whole entities when the rows span fewer than 4 weeks; the result says which) for both, so the
interval is of the *difference*, not of two separate numbers: shared noise (a good week, an easy
batch of e-mails) cancels.

Repeated testing: the gates run every week, and a rule "promote when the interval clears 0" tested
weekly would promote a no-better challenger sooner or later by chance. Each week's test is
one-sided at ``alpha / testing_horizon_weeks`` (Bonferroni over the horizon): by the union bound,
the chance of at least one promotion of a challenger that is not better, in any run of
``testing_horizon_weeks`` consecutive weeks, stays at or below ``alpha``. With the defaults
(alpha 0.10 over 4 weeks) each week uses 0.025 one-sided, i.e. the reported intervals are 95 %
two-sided and a gate uses one of their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.spec import Gates
from models.bootstrap import Blocks, block_counts, percentile_interval
from models.ope import Difference, OPEResult

CALIBRATION_BINS = 10


def weekly_alpha(gates: Gates) -> float:
    """One-sided level of each weekly test (Bonferroni over the spec's horizon of weeks)."""
    return gates.alpha / max(gates.testing_horizon_weeks, 1)


def estimate_settings(gates: Gates, seed: int) -> dict[str, object]:
    """Keyword arguments of the off-policy estimates (models/ope.py) under a spec's gates."""
    return {"one_sided_alpha": weekly_alpha(gates), "resamples": gates.bootstrap_resamples, "seed": seed,
            "widen": gates.value_interval == "widened"}


def interval_note(gates: Gates) -> str:
    """How a value interval was made, for the texts that quote one."""
    return ", widened to the model-based interval where wider" if gates.value_interval == "widened" else ""


def _row_weights(blocks: Blocks, resamples: int, seed: int) -> np.ndarray:
    """(draws × rows): how often each row is drawn, i.e. its block's count."""
    return block_counts(blocks, resamples, seed)[:, blocks.index]


def weighted_auc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of ``weights`` (ties count half), all draws at once."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    y = labels[order].astype(float)
    positives = np.add.reduceat(w * y, starts, axis=1)
    negatives = np.add.reduceat(w * (1.0 - y), starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(positives * (below + 0.5 * negatives), axis=1) / (positives.sum(axis=1) * negatives.sum(axis=1))


def weighted_calibration_error(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> np.ndarray:
    """models.evaluate.expected_calibration_error for each row of ``weights``."""
    index = np.minimum((scores * bins).astype(int), bins - 1)
    one_hot = np.zeros((scores.size, bins))
    one_hot[np.arange(scores.size), index] = 1.0
    observed = weights @ (one_hot * labels[:, None])
    predicted = weights @ (one_hot * scores[:, None])
    return np.abs(observed - predicted).sum(axis=1) / weights.sum(axis=1)


def paired_metric_differences(labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray, blocks: Blocks,
                              one_sided_alpha: float, resamples: int = 1000, seed: int = 0) -> dict[str, Difference]:
    """ROC AUC and calibration error of both models, their difference and its paired interval."""
    labels = np.asarray(labels, float)
    challenger, champion = np.asarray(challenger, float), np.asarray(champion, float)
    ones = np.ones((1, labels.size))
    draws = _row_weights(blocks, resamples, seed)
    result = {}
    for name, metric in (("roc_auc", weighted_auc), ("calibration_error", weighted_calibration_error)):
        a, b = float(metric(ones, labels, challenger)[0]), float(metric(ones, labels, champion)[0])
        low, high = percentile_interval(metric(draws, labels, challenger) - metric(draws, labels, champion), one_sided_alpha)
        result[name] = Difference(name, a, b, a - b, low, high, blocks.kind)
    return result


@dataclass(frozen=True)
class Evidence:
    """What the statistical gates look at; every figure also goes to MLflow and the Prefect artifact."""
    one_sided_alpha: float
    challenger_value: dict[str, OPEResult]                 # by method: "snips", "dr"
    champion_value: dict[str, OPEResult] = field(default_factory=dict)
    differences: dict[str, Difference] = field(default_factory=dict)   # "roc_auc", "calibration_error", "value_dr", ...

    def metrics(self) -> dict[str, float]:
        figures = {"gate_one_sided_alpha": self.one_sided_alpha}
        for method, result in self.challenger_value.items():
            figures |= result.as_metrics(f"ope_{method}_challenger")
        for method, result in self.champion_value.items():
            figures |= result.as_metrics(f"ope_{method}_champion")
        for name, diff in self.differences.items():
            figures |= diff.as_metrics(f"diff_{name}")
        return {k: v for k, v in figures.items() if np.isfinite(v)}

    def table(self) -> list[dict[str, object]]:
        """Rows for the report: one per compared figure."""
        rows: list[dict[str, object]] = []
        for name, d in self.differences.items():
            rows.append({"figure": name, "challenger": d.challenger, "champion": d.champion, "difference": d.difference,
                         "interval": f"[{d.low:.4f}, {d.high:.4f}]", "resampled": d.blocks})
        return rows

    def value_table(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for who, results in (("challenger", self.challenger_value), ("champion", self.champion_value)):
            for method, r in results.items():
                rows.append({"policy": who, "method": method, "value_per_decision": r.estimate,
                             "interval": f"[{r.low:.2f}, {r.high:.2f}]", "coverage": r.coverage, "ess": r.ess,
                             "rows": r.rows, "unknown_propensity_rows": r.unknown_rows, "resampled": r.blocks})
        return rows


def coverage_problems(gates: Gates, value: OPEResult) -> list[str]:
    """Why the logs cannot vouch for the challenger's decisions (empty when they can)."""
    problems = []
    if not value.coverage >= gates.min_coverage:
        problems.append(f"the logs cover {value.coverage:.1%} of the challenger's decisions, less than the "
                        f"{gates.min_coverage:.0%} the spec needs (it leaves the explored band)")
    if not value.ess >= gates.min_ess:
        problems.append(f"effective sample size {value.ess:.0f} below the spec's {gates.min_ess:.0f}")
    return problems


def value_verdict(gates: Gates, difference: Difference, one_sided_alpha: float,
                  incumbent: str = "champion") -> tuple[str, str]:
    """("better" | "worse" | "unclear", reason) from the paired interval of the value difference."""
    level = 1 - 2 * one_sided_alpha
    text = (f"value per decision {difference.challenger:.2f} vs {incumbent} {difference.champion:.2f}: difference "
            f"{difference.difference:+.2f}, {level:.0%} interval [{difference.low:+.2f}, {difference.high:+.2f}] "
            f"(paired, resampling {difference.blocks}s{interval_note(gates)}; one-sided {one_sided_alpha:.3g} = alpha {gates.alpha:g} "
            f"over {gates.testing_horizon_weeks} weekly tests)")
    if difference.low > gates.min_value_improvement:
        return "better", text
    if difference.high < gates.min_value_improvement and difference.high < 0:
        return "worse", f"challenger is worse: {text}"
    return "unclear", (f"not enough evidence: {text} does not clear the required improvement "
                       f"{gates.min_value_improvement:g}")
