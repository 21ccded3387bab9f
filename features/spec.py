"""Model specs: TOML files read once into typed, validated objects.

A company with other CRM fields writes its own spec; no code changes. The spec's content hash
is logged with every run so a model can be traced to the exact spec it was trained under.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

FeatureType = Literal["numeric", "categorical", "boolean"]


class SpecError(ValueError):
    """A spec file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    column: str
    values: tuple[Any, ...] = ()       # `in = [...]`
    equals: Any = None
    at_least: float | None = None


SHARE_KEPT = "share_kept"


@dataclass(frozen=True)
class Outcomes:
    values: tuple[str, ...]
    positive: tuple[str, ...]
    terminal: tuple[str, ...]
    maturity_days: int
    # Graded outcomes ([outcomes.grades]): outcome -> a fixed grade in [0, 1], or "share_kept" (the share of
    # the draft the person kept, from the outcome row). Empty: grade = the binary label (positive = 1).
    grades: tuple[tuple[str, float | str], ...] = ()
    # Grade of a "share_kept" outcome whose row does not say how much was kept.
    share_kept_default: float = 0.5

    @property
    def graded(self) -> bool:
        return bool(self.grades)


@dataclass(frozen=True)
class Objective:
    kind: Literal["expected_value", "precision_target"]
    value_per_conversion: float = 0.0
    cost_per_action: float = 0.0
    action_effect: float = 1.0
    weekly_capacity: int = 0
    target_acceptance: float = 0.95
    # The target must hold for the lower confidence bound (Wilson, one-sided at this level) of the graded
    # acceptance above the threshold, not for the point estimate on the rows the threshold was chosen on.
    # 0 = point estimate.
    acceptance_confidence: float = 0.0
    value_per_action: float = 0.0
    cost_per_failure: float = 0.0
    min_auto_sent: int = 50


@dataclass(frozen=True)
class DriftConfig:
    method: str
    categorical_method: str
    threshold: float
    drift_share: float
    score_threshold: float
    outcome_rate_tolerance: float
    # Retraining trigger (models/trigger.py). A single noisy week must not retrain: drift has to
    # show in at least `trigger_k` of the last `trigger_n` weekly windows (the latest included),
    # or in the latest window together with a KPI drop.
    trigger_k: int = 2
    trigger_n: int = 3
    # KPI = positive-outcome rate at equal label age; a drop counts when the part of it that the
    # loop's own policy change does not explain exceeds this (absolute, e.g. 0.03 = 3 points).
    kpi_drop_tolerance: float = 0.03
    # Fewer labelled rows than this in a window: its KPI is too noisy to act on (reported, not used).
    kpi_min_rows: int = 200


@dataclass(frozen=True)
class TrainingConfig:
    min_labelled_rows: int
    calibration: Literal["isotonic", "sigmoid"]
    test_rows: int
    calibration_rows: int
    retrain_every_weeks: int
    seed: int
    # The decision as a model input, and decisions by comparing their expected value (models/decision_aware.py).
    # Needed wherever the decision changes the outcome (a meeting changes whether a lead converts).
    decision_aware: bool = False
    # How a decision-aware model may let the decision act: "shared" shifts the log-odds of the outcome by one
    # learned amount for every entity (the decision interacts with no feature), so the effect is learned from
    # all rows where both decisions occur; "free" lets it differ by feature, which needs far more explored rows.
    decision_effect: Literal["shared", "free"] = "free"
    # "gradient_boosting" finds interactions and thresholds itself but needs many rows; "logistic" (numbers on a
    # signed log scale, L2-regularised) learns from a few thousand, so a first model can beat a good cold-start rule.
    estimator: Literal["gradient_boosting", "logistic"] = "gradient_boosting"
    # Isotonic calibration needs plenty of positives; below this many in the calibration slice a sigmoid is fitted.
    isotonic_min_positives: int = 1000
    # A decision-aware logistic model's decision effect (a log-odds shift) gets a normal prior centred on what the
    # objective's action_effect says, with this standard deviation, instead of a penalty towards no effect: it
    # starts from the business's assumption and explored rows move it (models/logistic_prior.py). None: no prior.
    decision_effect_prior_sd: float | None = None


@dataclass(frozen=True)
class Segments:
    """Per-segment calibration and thresholds (models/segments.py); no ``column``: one global calibration."""
    column: str = ""
    # Segments with fewer labelled calibration rows than this use the global calibration and threshold.
    min_rows: int = 300
    # Partial pooling: a segment's recalibration is shrunk towards the global one with weight n / (n + prior_rows).
    prior_rows: float = 300.0


@dataclass(frozen=True)
class Recalibration:
    """Cheap recalibration between retrainings (models/recalibrate.py)."""
    enabled: bool = True
    # The champion's ranking still counts as good while its ROC AUC on recent mature outcomes is at most this
    # much below its training (test) AUC; beyond it only a retraining helps.
    auc_tolerance: float = 0.03
    # Recent mature rows the check needs before it says anything.
    min_rows: int = 1000


@dataclass(frozen=True)
class Gates:
    min_labelled_rows: int
    auc_tolerance: float
    max_calibration_error: float
    min_auc: float
    max_decision_flip_share: float
    # A promotion waiting for a person expires as rejected after this long: an unanswered request
    # must not keep a challenger in limbo (and a paused approval run alive) for ever.
    approval_timeout_hours: float = 72.0
    # Statistical gates (models/gates.py). Each weekly test is one-sided at alpha / testing_horizon_weeks
    # (Bonferroni): in any run of that many weekly tests, the chance of promoting a challenger that is
    # not better stays <= alpha. Defaults: 0.10 over 4 weeks = 0.025 per week (95 % two-sided intervals).
    alpha: float = 0.10
    testing_horizon_weeks: int = 4
    # The paired interval of (challenger - champion) value per decision (doubly robust, EUR) must lie
    # above this for an automatic promotion; otherwise "keep the champion, not enough evidence".
    min_value_improvement: float = 0.0
    # Below either, the logs cannot vouch for the challenger's decisions: a person decides.
    min_coverage: float = 0.90          # share of the challenger's decision mass the logging policy could take
    min_ess: float = 100.0              # effective sample size of the importance weights
    bootstrap_resamples: int = 1000
    # The doubly robust value intervals of the promotion gates (the guard always widens): "widened" takes the block
    # bootstrap's percentile interval and widens it to the normal interval of the model-based standard error where
    # that is wider (models/ope.py);
    # "bootstrap" keeps the percentile interval alone, which is too narrow when rewards are rare and few rows are
    # explored (on the lead simulator it held the truth in 80 % of comparisons for a nominal 95 %).
    value_interval: str = "widened"
    # Guard after promotion (models/guard.py): for this many weeks after a promotion, the new champion's
    # value gain over the previous one is re-estimated off-policy on the new weeks' logs; when it clearly
    # falls short of the gain claimed at promotion by more than `guard_margin` (EUR per decision) and no
    # longer clears `min_value_improvement`, the previous champion is restored. 0 weeks: no guard.
    guard_weeks: int = 2
    guard_margin: float = 0.0
    # Whether a spec's first model must also beat the cold-start rule's value on the logs (the same value gate
    # as against a champion). Off by default: with a rule as good as the shipped lead rule and 5 % exploration,
    # the first decision-aware models rarely prove a gain, and the rule's exploration keeps costing (README,
    # "Decision quality").
    first_model_against_rule: bool = False
    # A first model whose policy decides more than this share of last week's rows otherwise than the cold-start
    # rule did waits for a person, as a challenger flipping more than max_decision_flip_share of the champion's
    # decisions does. None: no limit (a rule that sends every reply draft to a person is replaced wholesale).
    first_model_max_flip_share: float | None = None


@dataclass(frozen=True)
class Exploration:
    """Flip ``share`` of the decisions whose score is within ``band`` of the threshold (see models/exploration.py)."""
    share: float = 0.0
    band: float = 0.0
    seed: int = 0
    never_to: tuple[str, ...] = ()     # decisions exploration never takes (e.g. auto_send)
    rule_share: float | None = None    # share for rows the cold-start rule decides (None: ``share``)


@dataclass(frozen=True)
class Patterns:
    """The weekly pattern report and safe mode (models/patterns.py, models/safe_decisions.py).

    Per value of each ``segments`` column, the positive-outcome rate at equal label age now against the
    champion's training window. ``rate_of``: "all" labelled rows, or only rows that took the
    "positive_decision" (conversion per proposed meeting). A segment is flagged when the rate is clearly
    below ``floor`` or clearly fell by more than ``max_drop`` (either may be left out); with ``safe_mode``
    flagged segments take the negative decision until a person clears them, except ``explore_share`` of
    the rows the policy would have acted on (never into a decision [exploration] never_to excludes).
    """
    segments: tuple[str, ...] = ()
    rate_of: Literal["all", "positive_decision"] = "all"
    floor: float | None = None
    max_drop: float | None = None
    min_rows: int = 100
    alpha: float = 0.10                 # family-wise over the segments tested in one report (Bonferroni) ...
    testing_horizon_weeks: int = 4      # ... and over this many weekly reports, as the gates do
    safe_mode: bool = False
    explore_share: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class Kpis:
    """How the weekly KPIs (features/kpis.py) name this model's figures; the figures are the same for every model."""
    # Plain words for the positive decision's positive-outcome rate in dashboards and artifacts.
    outcome_rate_label: str = "positive-outcome rate of the positive decision"
    # The decision that hands the case to a person (replies: human_review); unset: no escalation KPI.
    escalation_decision: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    entity: str
    positive_decision: str
    negative_decision: str
    unknown_categories: Literal["accept", "reject"]
    features: tuple[Feature, ...]
    outcomes: Outcomes
    objective: Objective
    drift: DriftConfig
    cold_start: tuple[Condition, ...]
    training: TrainingConfig
    gates: Gates
    content_hash: str
    source_text: str
    exploration: Exploration = Exploration()
    patterns: Patterns = Patterns()
    kpis: Kpis = Kpis()
    segments: Segments = Segments()
    recalibration: Recalibration = Recalibration()
    # Rows with a category value the champion never saw: decided by the cold-start rule ("rule") until a
    # retraining has seen it, or by the champion's extrapolation ("model"). See models/support.py.
    new_categories: Literal["rule", "model"] = "rule"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def features_of(self, kind: FeatureType) -> list[str]:
        return [f.name for f in self.features if f.type == kind]

    @property
    def decisions(self) -> tuple[str, str]:
        return (self.positive_decision, self.negative_decision)


def _section(raw: dict, key: str, path: Path) -> dict:
    if key not in raw or not isinstance(raw[key], dict):
        raise SpecError(f"{path}: missing table [{key}]")
    return raw[key]


def _build(cls, values: dict, path: Path, section: str):
    try:
        return cls(**values)
    except TypeError as exc:  # unknown or missing key
        raise SpecError(f"{path}: [{section}] {exc}") from None


def parse_spec(text: str, path: Path) -> ModelSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    for key in ("name", "entity", "positive_decision", "negative_decision"):
        if not isinstance(raw.get(key), str):
            raise SpecError(f"{path}: missing string key '{key}'")
    features = []
    for item in raw.get("features", []):
        if item.get("type") not in ("numeric", "categorical", "boolean"):
            raise SpecError(f"{path}: feature '{item.get('name')}' has type {item.get('type')!r}; "
                            "expected numeric, categorical or boolean")
        features.append(Feature(item["name"], item["type"], tuple(item.get("categories", ()))))
    if not features:
        raise SpecError(f"{path}: no [[features]]")
    outcomes = _section(raw, "outcomes", path)
    out = Outcomes(tuple(outcomes["values"]), tuple(outcomes["positive"]),
                   tuple(outcomes.get("terminal", outcomes["values"])), int(outcomes["maturity_days"]),
                   _grades(outcomes, path), float(outcomes.get("share_kept_default", 0.5)))
    unknown = set(out.positive) - set(out.values)
    if unknown:
        raise SpecError(f"{path}: [outcomes] positive names values not in 'values': {sorted(unknown)}")
    if not 0 <= out.share_kept_default <= 1:
        raise SpecError(f"{path}: [outcomes] share_kept_default must be in [0, 1], not {out.share_kept_default}")
    conditions = tuple(
        Condition(c["column"], tuple(c.get("in", ())), c.get("equals"), c.get("at_least"))
        for c in _section(raw, "cold_start", path).get("any", [])
    )
    for c in conditions:
        if c.column not in {f.name for f in features}:
            raise SpecError(f"{path}: [cold_start] uses unknown column '{c.column}'")
    drift = _build(DriftConfig, _section(raw, "drift", path), path, "drift")
    if not 1 <= drift.trigger_k <= drift.trigger_n:
        raise SpecError(f"{path}: [drift] needs 1 <= trigger_k <= trigger_n, got k={drift.trigger_k}, n={drift.trigger_n}")
    policy = raw.get("unknown_categories", "accept")
    if policy not in ("accept", "reject"):
        raise SpecError(f"{path}: unknown_categories must be 'accept' or 'reject', not {policy!r}")
    exploration = _build(Exploration, raw.get("exploration", {}), path, "exploration")
    exploration = Exploration(float(exploration.share), float(exploration.band), int(exploration.seed),
                              tuple(exploration.never_to),
                              None if exploration.rule_share is None else float(exploration.rule_share))
    if not (0 <= exploration.share < 0.5 and exploration.band >= 0):
        raise SpecError(f"{path}: [exploration] needs 0 <= share < 0.5 and band >= 0, got share={exploration.share}, "
                        f"band={exploration.band}")
    if exploration.rule_share is not None and not 0 <= exploration.rule_share < 0.5:
        raise SpecError(f"{path}: [exploration] needs 0 <= rule_share < 0.5, got {exploration.rule_share}")
    positive, negative = raw["positive_decision"], raw["negative_decision"]
    if set(exploration.never_to) - {positive, negative}:
        raise SpecError(f"{path}: [exploration] never_to names decisions other than {positive!r} and {negative!r}")
    kpis = _build(Kpis, raw.get("kpis", {}), path, "kpis")
    if kpis.escalation_decision not in (None, positive, negative):
        raise SpecError(f"{path}: [kpis] escalation_decision must be {positive!r} or {negative!r}, "
                        f"not {kpis.escalation_decision!r}")
    segments = _build(Segments, raw.get("segments", {}), path, "segments")
    if segments.column and segments.column not in {f.name for f in features if f.type == "categorical"}:
        raise SpecError(f"{path}: [segments] column '{segments.column}' is not a categorical feature")
    if segments.min_rows < 1 or segments.prior_rows < 0:
        raise SpecError(f"{path}: [segments] needs min_rows >= 1 and prior_rows >= 0")
    recalibration = _build(Recalibration, raw.get("recalibration", {}), path, "recalibration")
    objective = _build(Objective, _section(raw, "objective", path), path, "objective")
    if not 0 <= objective.acceptance_confidence < 1:
        raise SpecError(f"{path}: [objective] acceptance_confidence must be in [0, 1), not {objective.acceptance_confidence}")
    gates = _build(Gates, _section(raw, "gates", path), path, "gates")
    if not (0 < gates.alpha < 1 and gates.testing_horizon_weeks >= 1 and 0 <= gates.min_coverage <= 1
            and gates.bootstrap_resamples >= 100):
        raise SpecError(f"{path}: [gates] needs 0 < alpha < 1, testing_horizon_weeks >= 1, 0 <= min_coverage <= 1 "
                        f"and bootstrap_resamples >= 100")
    if not gates.approval_timeout_hours > 0:
        raise SpecError(f"{path}: [gates] approval_timeout_hours must be positive, not {gates.approval_timeout_hours!r}")
    if gates.value_interval not in ("widened", "bootstrap"):
        raise SpecError(f"{path}: [gates] value_interval must be 'widened' or 'bootstrap', not {gates.value_interval!r}")
    if gates.first_model_max_flip_share is not None and not 0 <= gates.first_model_max_flip_share <= 1:
        raise SpecError(f"{path}: [gates] first_model_max_flip_share must be in [0, 1], "
                        f"not {gates.first_model_max_flip_share!r}")
    if gates.guard_weeks < 0 or gates.guard_margin < 0:
        raise SpecError(f"{path}: [gates] guard_weeks and guard_margin must not be negative")
    patterns = _patterns(raw, features, path)
    if patterns.safe_mode and patterns.explore_share > 0 and exploration.share > 0 and patterns.seed == exploration.seed:
        # Equal seeds would give both the same draw per action: the floor would keep exactly the
        # explored rows, and P(positive) would no longer be the product the logged propensity says.
        raise SpecError(f"{path}: [patterns] seed must differ from [exploration] seed")
    return ModelSpec(
        name=raw["name"],
        description=raw.get("description", ""),
        entity=raw["entity"],
        positive_decision=raw["positive_decision"],
        negative_decision=raw["negative_decision"],
        unknown_categories=policy,
        features=tuple(features),
        outcomes=out,
        objective=objective,
        drift=drift,
        cold_start=conditions,
        training=_training(raw, objective, path),
        gates=gates,
        content_hash=hashlib.sha256(text.encode()).hexdigest()[:16],
        source_text=text,
        exploration=exploration,
        patterns=patterns,
        kpis=kpis,
        segments=segments,
        recalibration=recalibration,
        new_categories=_choice(raw, "new_categories", ("rule", "model"), path),
    )


def _one_of(value: Any, allowed: tuple[str, ...], where: str, path: Path) -> Any:
    if value not in allowed:
        raise SpecError(f"{path}: {where} is {value!r}; expected one of {', '.join(allowed)}")
    return value


def _choice(raw: dict, key: str, allowed: tuple[str, ...], path: Path) -> str:
    """A top-level choice of the spec; the first allowed value when the key is absent."""
    return _one_of(raw.get(key, allowed[0]), allowed, key, path)


_TRAINING_CHOICES: Final = {"calibration": ("isotonic", "sigmoid"), "estimator": ("gradient_boosting", "logistic"),
                             "decision_effect": ("shared", "free")}


def _training(raw: dict, objective: Objective, path: Path) -> TrainingConfig:
    training = _build(TrainingConfig, _section(raw, "training", path), path, "training")
    for key, allowed in _TRAINING_CHOICES.items():
        _one_of(getattr(training, key), allowed, f"[training] {key}", path)
    prior_sd = training.decision_effect_prior_sd
    if prior_sd is not None:
        if isinstance(prior_sd, bool) or not isinstance(prior_sd, (int, float)) or not prior_sd > 0:
            raise SpecError(f"{path}: [training] decision_effect_prior_sd must be a positive number, not {prior_sd!r}")
        if not (training.decision_aware and training.estimator == "logistic"):
            raise SpecError(f"{path}: [training] decision_effect_prior_sd needs decision_aware = true and "
                            f"estimator = \"logistic\" (the prior is on the logistic model's decision coefficient)")
        if objective.kind != "expected_value" or not 0 <= objective.action_effect < 1:
            raise SpecError(f"{path}: [training] decision_effect_prior_sd centres the prior on [objective] action_effect, "
                            f"which needs kind = \"expected_value\" and 0 <= action_effect < 1 "
                            f"(got {objective.kind!r}, {objective.action_effect})")
        training = replace(training, decision_effect_prior_sd=float(prior_sd))
    return training


def _patterns(raw: dict, features: list[Feature], path: Path) -> Patterns:
    patterns = _build(Patterns, raw.get("patterns", {}), path, "patterns")
    patterns = Patterns(tuple(patterns.segments), patterns.rate_of,
                        None if patterns.floor is None else float(patterns.floor),
                        None if patterns.max_drop is None else float(patterns.max_drop), int(patterns.min_rows),
                        float(patterns.alpha), int(patterns.testing_horizon_weeks), bool(patterns.safe_mode),
                        float(patterns.explore_share), int(patterns.seed))
    categorical = {f.name for f in features if f.type == "categorical"}
    if set(patterns.segments) - categorical:
        raise SpecError(f"{path}: [patterns] segments must be categorical features, not "
                        f"{sorted(set(patterns.segments) - categorical)}")
    if patterns.rate_of not in ("all", "positive_decision"):
        raise SpecError(f"{path}: [patterns] rate_of must be 'all' or 'positive_decision', not {patterns.rate_of!r}")
    if not (0 < patterns.alpha < 1 and patterns.testing_horizon_weeks >= 1 and 0 <= patterns.explore_share < 0.5
            and patterns.min_rows >= 1):
        raise SpecError(f"{path}: [patterns] needs 0 < alpha < 1, testing_horizon_weeks >= 1, 0 <= explore_share < 0.5 "
                        f"and min_rows >= 1")
    return patterns


def _grades(outcomes: dict, path: Path) -> tuple[tuple[str, float | str], ...]:
    """[outcomes.grades] checked: every terminal outcome graded, fixed grades in [0, 1] and on the side of the
    binary label (positive outcomes >= 0.5, others <= 0.5), or "share_kept" for a non-positive outcome."""
    raw = outcomes.get("grades")
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: [outcomes.grades] must be a table of outcome = grade")
    values, positive = set(outcomes["values"]), set(outcomes["positive"])
    grades: list[tuple[str, float | str]] = []
    for outcome, grade in raw.items():
        if outcome not in values:
            raise SpecError(f"{path}: [outcomes.grades] grades '{outcome}', which is not one of the outcome values")
        if grade == SHARE_KEPT:
            if outcome in positive:
                raise SpecError(f"{path}: [outcomes.grades] '{outcome}' is positive; only a non-positive outcome "
                                f"may be graded by {SHARE_KEPT}")
            grades.append((outcome, SHARE_KEPT))
            continue
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not 0 <= grade <= 1:
            raise SpecError(f"{path}: [outcomes.grades] {outcome} = {grade!r}: a grade is a number in [0, 1] or "
                            f"\"{SHARE_KEPT}\"")
        if (grade < 0.5) if outcome in positive else (grade > 0.5):
            raise SpecError(f"{path}: [outcomes.grades] {outcome} = {grade} contradicts the binary label "
                            f"({'positive' if outcome in positive else 'not positive'})")
        grades.append((outcome, float(grade)))
    missing = set(outcomes.get("terminal", outcomes["values"])) - {o for o, _ in grades}
    if missing:
        raise SpecError(f"{path}: [outcomes.grades] misses terminal outcomes {sorted(missing)}")
    return tuple(grades)


def load_spec(path: Path) -> ModelSpec:
    return parse_spec(path.read_text(encoding="utf-8"), path)


def load_specs(specs_dir: Path) -> dict[str, ModelSpec]:
    """All specs in a folder, by model name."""
    specs = {}
    for path in sorted(specs_dir.glob("*.toml")):
        spec = load_spec(path)
        if spec.name in specs:
            raise SpecError(f"{path}: model name '{spec.name}' is defined twice")
        specs[spec.name] = spec
    if not specs:
        raise SpecError(f"{specs_dir}: no *.toml model specs found")
    return specs
