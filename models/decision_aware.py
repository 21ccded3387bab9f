"""Decision-aware outcome models: P(outcome | features, decision), the decision as a model input.

A lead that got a meeting converts differently from one that was nurtured. A model fit on all
labelled rows as if the decision did not matter learns a mixture whose weights are whatever the
logging policy happened to do: where the old policy always proposed a meeting it predicts the
meeting's conversion chance, also for the nurtured leads it is asked about, and the other way
round. Here the decision is an input of the model (an "S-learner": one model, so what the features
say is learned from all rows and the decision's effect from where both decisions were taken), and
the policy compares the expected value of the two decisions.

Exploration (models/exploration.py) is what makes this work: it puts some rows of each decision
in every region the policy is unsure about, so each model sees the other decision's side of the
threshold, and the cold-start rule explores all its decisions. Where a decision was never taken the
model carries the decision's effect over from where it was; the off-policy coverage gate notices
a policy that relies on that.

The decision score for an expected-value objective is the **incremental probability**
``p(positive | x, act) − p(positive | x, don't act)``: the chance the action itself adds. Acting
pays when ``value · Δp > cost``, so the threshold on it is the break-even ``cost / value`` (raised
by a weekly capacity, if any). For a precision target the score is ``p(positive | x, act)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from features.build import model_inputs
from features.spec import ModelSpec

DECISION_INPUT = "decision"


@dataclass
class DecisionAwareModel:
    """A calibrated classifier with the decision as one of its inputs, behind one estimator-like object.

    ``predict_proba(X)`` is P(outcome | X, positive decision), so the registry's signature, the
    MLflow pyfunc and the model card treat it like any classifier; everything that needs the
    decision (policy, evaluation) goes through :func:`outcome_probability` and :func:`decision_scores`.
    """

    positive_decision: str
    negative_decision: str
    estimator: Any      # fitted on the spec's features plus a ``decision`` column

    @property
    def classes_(self) -> np.ndarray:
        return self.estimator.classes_

    def predict_proba(self, inputs: Any) -> np.ndarray:
        return self.estimator.predict_proba(with_decision(inputs, self.positive_decision))

    def probability_under(self, inputs: Any, decision: str) -> np.ndarray:
        """P(positive outcome | inputs, decision) for one decision for every row."""
        if decision not in (self.positive_decision, self.negative_decision):
            raise ValueError(f"decision '{decision}' is not '{self.positive_decision}' or '{self.negative_decision}'")
        return self.estimator.predict_proba(with_decision(inputs, decision))[:, 1]


def with_decision(inputs: Any, decision: str | pl.Series) -> Any:
    """Model inputs (polars or, at the MLflow boundary, pandas) with the decision column set."""
    if isinstance(inputs, pl.DataFrame):
        value = decision if isinstance(decision, pl.Series) else pl.lit(decision)
        return inputs.with_columns(value.cast(pl.String).alias(DECISION_INPUT))
    values = decision.to_numpy() if isinstance(decision, pl.Series) else decision
    return inputs.assign(**{DECISION_INPUT: values})


def is_decision_aware(estimator: Any) -> bool:
    return isinstance(estimator, DecisionAwareModel)


def action_probabilities(estimator: DecisionAwareModel, frame: pl.DataFrame, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive | x, positive decision), P(positive | x, negative decision)) for every row.

    One prediction on the rows stacked under both decisions: a pipeline call costs about 2 ms whatever
    its size, which is most of a single decision's time in the scoring service.
    """
    inputs = model_inputs(frame, spec)
    stacked = pl.concat([with_decision(inputs, spec.positive_decision), with_decision(inputs, spec.negative_decision)])
    probabilities = estimator.estimator.predict_proba(stacked)[:, 1]
    return probabilities[:frame.height], probabilities[frame.height:]


def outcome_probability(estimator: Any, frame: pl.DataFrame, spec: ModelSpec) -> np.ndarray:
    """P(positive outcome | x, the decision the row actually got): what labels are compared with.

    A pooled (older) estimator has only one probability per row, whatever the decision.
    """
    if not is_decision_aware(estimator):
        return estimator.predict_proba(model_inputs(frame, spec))[:, 1]
    if "decision" not in frame.columns:
        raise ValueError("a decision-aware model needs the logged 'decision' column to say which outcome it predicts")
    p_positive, p_negative = action_probabilities(estimator, frame, spec)
    took_positive = (frame.get_column("decision") == spec.positive_decision).to_numpy()
    return np.where(took_positive, p_positive, p_negative)


def decision_scores(estimator: Any, frame: pl.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The number the threshold applies to: incremental probability (expected value) or P(act succeeds)."""
    if not is_decision_aware(estimator):
        return estimator.predict_proba(model_inputs(frame, spec))[:, 1]
    p_positive, p_negative = action_probabilities(estimator, frame, spec)
    if spec.objective.kind == "expected_value":
        return p_positive - p_negative
    return p_positive
