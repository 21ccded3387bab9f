"""The demo's week-by-week comparison: the self-optimising loop, the week-4 champion frozen, the oracle.

Realised value comes from the simulator's ground truth (never seen by training); all three
policies face the same entities with the same random draws, so differences are the policies'.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from models.evaluate import expected_calibration_error  # noqa: E402

POLICIES = ("loop", "frozen", "oracle")
COLUMNS = ["week", "model", "policy", "value", "roc_auc", "calibration_error", "promoted", "drift_alarm",
           "positive_share", "model_version", "threshold"]
# The off-policy evidence behind the loop's retraining decision that week (null when none was made):
# the challenger's doubly robust value per decision with its interval, coverage and ESS, and the
# paired difference to the champion with its interval.
EVIDENCE = ["decision", "ope_value", "ope_low", "ope_high", "ope_coverage", "ope_ess", "value_diff", "diff_low", "diff_high"]


def policy_row(week: int, model: str, policy: str, value: pl.Series, success: pl.Series, scores: np.ndarray,
               positive: np.ndarray, version: str, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    truth = success.cast(pl.Int8).to_numpy()
    ranked = truth.min() != truth.max() and np.unique(scores).size > 2
    return {"week": week, "model": model, "policy": policy, "value": float(value.sum()),
            "roc_auc": float(roc_auc_score(truth, scores)) if ranked else None,
            "calibration_error": expected_calibration_error(truth, np.clip(scores, 0, 1)) if ranked else None,
            "promoted": False, "drift_alarm": False, "positive_share": float(np.mean(positive)),
            "model_version": version, "threshold": float(threshold), **dict.fromkeys(EVIDENCE)}


def evidence_columns(retrain: dict) -> dict:
    """The EVIDENCE columns from a retraining result (flows/retrain.py): decision and doubly robust figures."""
    columns: dict = dict.fromkeys(EVIDENCE)
    columns["decision"] = retrain.get("event")
    for row in retrain.get("policy_values", []):
        if row["policy"] == "challenger" and row["method"] == "dr":
            low, high = (float(x) for x in row["interval"].strip("[]").split(","))
            columns |= {"ope_value": row["value_per_decision"], "ope_low": low, "ope_high": high,
                        "ope_coverage": row["coverage"], "ope_ess": row["ess"]}
    for row in retrain.get("differences", []):
        if row["figure"] == "value_dr":
            low, high = (float(x) for x in row["interval"].strip("[]").split(","))
            columns |= {"value_diff": row["difference"], "diff_low": low, "diff_high": high}
    return columns


def weekly_table(rows: list[dict]) -> pl.DataFrame:
    schema = {c: pl.Float64 for c in EVIDENCE} | {"decision": pl.String}
    return (pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col(c).cast(t) for c, t in schema.items())
            .select(COLUMNS + EVIDENCE).sort("model", "week", "policy"))


def promotion_evidence(table: pl.DataFrame) -> pl.DataFrame:
    """One line per retraining decision of the loop: what the off-policy estimate said behind it."""
    return (table.filter((pl.col("policy") == "loop") & pl.col("decision").is_not_null())
            .select("model", "week", "decision", pl.col("model_version").alias("champion_before"),
                    *(pl.col(c).round(2) for c in ("ope_value", "ope_low", "ope_high")),
                    pl.col("ope_coverage").round(3), pl.col("ope_ess").round(0),
                    *(pl.col(c).round(2) for c in ("value_diff", "diff_low", "diff_high")))
            .sort("model", "week"))


def comparison_after(table: pl.DataFrame, model: str, first_week: int) -> dict[str, float]:
    """Value summed over the weeks from ``first_week`` on, per policy."""
    sums = (table.filter((pl.col("model") == model) & (pl.col("week") >= first_week))
            .group_by("policy").agg(pl.col("value").sum()))
    return dict(zip(sums["policy"].to_list(), sums["value"].to_list(), strict=True))


def wide(table: pl.DataFrame) -> pl.DataFrame:
    """One line per model and week: the three values, the loop champion's quality, promotions and alarms."""
    values = table.pivot(on="policy", index=["model", "week"], values="value")
    loop = table.filter(pl.col("policy") == "loop").select(
        "model", "week", pl.col("model_version").alias("champion"), pl.col("threshold").round(3),
        pl.col("roc_auc").round(3).alias("auc"), pl.col("calibration_error").round(3).alias("ece"), "promoted", "drift_alarm")
    return (values.join(loop, on=["model", "week"])
            .with_columns(pl.col(p).round(0) for p in POLICIES)
            .select("model", "week", *POLICIES, "champion", "threshold", "auc", "ece", "promoted", "drift_alarm")
            .sort("model", "week"))


def chart(table: pl.DataFrame, drift_weeks: dict[str, int], path: Path) -> Path:
    models = table.get_column("model").unique().sort().to_list()
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 4 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        part = table.filter(pl.col("model") == model)
        for policy, style in zip(POLICIES, ("-o", "--s", ":"), strict=True):
            line = part.filter(pl.col("policy") == policy).sort("week")
            ax.plot(line["week"].to_numpy(), line["value"].to_numpy() / 1000, style, label=policy)
        loop = part.filter(pl.col("policy") == "loop").sort("week")
        promoted = loop.filter(pl.col("promoted"))
        ax.scatter(promoted["week"].to_numpy(), promoted["value"].to_numpy() / 1000, marker="*", s=180, color="green",
                   zorder=5, label="promotion")
        alarms = loop.filter(pl.col("drift_alarm"))
        ax.scatter(alarms["week"].to_numpy(), alarms["value"].to_numpy() / 1000, marker="x", s=80, color="red",
                   zorder=5, label="drift alarm")
        if model in drift_weeks:
            ax.axvline(drift_weeks[model] - 0.5, color="grey", linestyle="--", label="scheduled drift")
        ax.set(title=f"{model}: realised value per week", xlabel="simulated week", ylabel="thousand EUR")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
