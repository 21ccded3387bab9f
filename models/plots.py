"""PNG figures for MLflow runs: calibration plot and threshold curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from models.evaluate import calibration_table  # noqa: E402


def calibration_plot(labels: np.ndarray, scores: np.ndarray, title: str, path: Path) -> Path:
    predicted, observed, counts = calibration_table(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.scatter(predicted, observed, s=20 + 180 * counts / max(counts.max(), 1), label="score bins (size = rows)")
    ax.plot(predicted, observed)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def threshold_plot(curve: pl.DataFrame, chosen: float, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["threshold"].to_numpy(), curve["objective"].to_numpy())
    ax.axvline(chosen, color="red", linestyle="--", label=f"chosen threshold {chosen:.3f}")
    ax.set(xlabel="threshold (positive decision if score >= threshold)", ylabel="objective on calibration slice (EUR)",
           title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
