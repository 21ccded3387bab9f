"""A seeded synthetic world: the CRM and the mailbox of a German mid-sized B2B company.

The feedback-loop demo needs a company it can run for many simulated weeks without real data:
leads arrive in the CRM and customer e-mails arrive in the mailbox, the loop decides what to do
with each one, and weeks later the company observes what happened. The world also knows the
ground truth the company never sees (the true conversion and acceptance probabilities), so the
demo can show how far each policy is from the best possible one (the oracle) and how much a model
that stops learning loses when the world changes underneath it.

Two scheduled changes ("drifts") make that visible:

* from ``lead_source_drift_week`` on, a quarter of the leads come from a new source,
  ``lead_marketplace``, with inflated engagement but almost no real buying intent, so a model
  trained before the drift scores them high and wastes sales meetings on them;
* from ``reply_template_drift_week`` on, returns are answered with a new template, ``ret_v2``,
  whose drafts are acceptable only about half the time, so a policy that keeps auto-sending
  returns starts sending bad replies to customers.

Everything is a pure function of ``(seed, model, week)``: the same week always yields the same
entities, the same random draws and the same observable events, and two policies facing the same
week face the same random draws (common random numbers), so their difference is the policies'
difference and not noise. All work is vectorised (numpy / polars); nothing loops over rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from features.spec import ModelSpec

MODELS: Final[tuple[str, str]] = ("lead_scoring", "reply_acceptance")

# Weeks are Europe/Berlin weeks (features/clock.py); kept local so the simulator has no clock state.
_BERLIN: Final = ZoneInfo("Europe/Berlin")

#: The lead source that appears at the lead drift; deliberately absent from the spec's categories.
NEW_LEAD_SOURCE: Final = "lead_marketplace"
#: The returns template used from the reply drift on; deliberately absent from the spec's categories.
NEW_RETURN_TEMPLATE: Final = "ret_v2"

_DATETIME: Final = pl.Datetime("us", "UTC")
_US_PER_HOUR: Final = 3_600_000_000
_US_PER_DAY: Final = 24 * _US_PER_HOUR


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------------
# Ground truth: leads
# --------------------------------------------------------------------------------------------
# Each category: (share of leads, additive effect on the logit of p_meeting). Source effects are
# relative to website_form (0) and roughly average to zero over the pre-drift mix, so "treat an
# unknown source like an average one" is the same as treating it like a website lead.
_LEAD_SOURCES: Final[dict[str, tuple[float, float]]] = {
    "website_form": (0.40, 0.0),
    "trade_fair": (0.15, 0.7),
    "referral": (0.12, 0.9),
    "cold_outreach": (0.23, -1.0),
    "partner": (0.10, 0.6),
}
_LEAD_INDUSTRIES: Final[dict[str, tuple[float, float]]] = {
    "manufacturing": (0.30, 0.15),
    "logistics": (0.15, 0.05),
    "retail": (0.15, -0.15),
    "it_services": (0.15, 0.10),
    "construction": (0.15, -0.10),
    "healthcare": (0.10, 0.0),
}
_LEAD_REGIONS: Final[dict[str, tuple[float, float]]] = {
    "nord": (0.20, 0.0),
    "sued": (0.30, 0.10),
    "west": (0.30, 0.05),
    "ost": (0.12, -0.10),
    "dach_other": (0.08, -0.15),
}
# Engagement by source: (P(requested_demo), mean pages_visited, mean email_opens). Website leads
# browse more, cold-outreach leads barely engage; marketplace leads are "engaged" by the
# marketplace's own nurturing bots and look hotter than anyone.
_LEAD_ENGAGEMENT: Final[dict[str, tuple[float, float, float]]] = {
    "website_form": (0.28, 6.0, 3.0),
    "trade_fair": (0.20, 3.0, 4.0),
    "referral": (0.20, 4.0, 3.0),
    "cold_outreach": (0.06, 2.0, 2.0),
    "partner": (0.18, 4.0, 3.0),
    NEW_LEAD_SOURCE: (0.40, 25.0, 13.0),
}
_NEW_SOURCE_SHARE: Final = 0.25
_LEAD_INTERCEPT: Final = -3.9
_DEMO_EFFECT: Final = 1.5
_PAGES_EFFECT: Final = 0.45     # per log(1 + pages_visited)
_OPENS_EFFECT: Final = 0.30     # per log(1 + email_opens)
_SIZE_EFFECT: Final = 0.12      # per log(company_size / 100)
# Marketplace leads: buying intent is tiny whatever their engagement says (p_meeting ~0.01-0.03).
_MARKETPLACE_INTERCEPT: Final = -4.35
_MARKETPLACE_DEMO_EFFECT: Final = 0.3
# Share of a lead's conversion chance that the meeting itself brings: a nurtured lead converts with
# (1 - this) times its meeting chance. The world's truth, not the spec's: the lead spec's
# `action_effect` is only the assumption a pooled (not decision-aware) model has to make.
_MEETING_EFFECT: Final = 0.65


# --------------------------------------------------------------------------------------------
# Ground truth: replies
# --------------------------------------------------------------------------------------------
# intent: (share of messages, template, median message length in characters, P(attachment))
_REPLY_INTENTS: Final[dict[str, tuple[float, str, float, float]]] = {
    "order_status": (0.35, "ord_v1", 250.0, 0.10),
    "return": (0.20, "ret_v1", 350.0, 0.30),
    "invoice_question": (0.20, "inv_v1", 400.0, 0.35),
    "quote_request": (0.15, "quo_v1", 600.0, 0.30),
    "complaint": (0.10, "cmp_v1", 900.0, 0.40),
}
# Logit of the acceptability of a draft by template, for a standard-tier German message of 300
# characters without attachment. Unknown templates get a coin flip (logit 0).
_TEMPLATE_LOGIT: Final[dict[str, float]] = {
    "ord_v1": 4.0,
    "ret_v1": 3.85,
    "inv_v1": 3.15,
    "quo_v1": 2.4,
    "cmp_v1": 1.25,
    NEW_RETURN_TEMPLATE: 0.62,
}
_LANGUAGES: Final[dict[str, tuple[float, float]]] = {"de": (0.85, 0.0), "en": (0.15, -0.5)}
_TIERS: Final[dict[str, tuple[float, float]]] = {
    "standard": (0.70, 0.0),
    "premium": (0.22, -0.4),
    "key_account": (0.08, -0.8),
}
_LENGTH_EFFECT: Final = -0.35      # per log(message_length / 300): long messages are harder
_RESOLVED_IF_ACCEPTABLE: Final = 0.98   # follow-up after an acceptable auto-sent reply
_COMPLAINED_IF_NOT: Final = 0.55        # ... after an unacceptable one: complaint, recontact, or silence
_RECONTACTED_IF_NOT: Final = 0.35
_ATTACHMENT_EFFECT: Final = -0.4   # the draft cannot read the attachment


# --------------------------------------------------------------------------------------------
# Observable outcomes
# --------------------------------------------------------------------------------------------
_LOST_SHARE: Final = 0.90              # non-converted leads that the CRM marks as lost
_EDITED_SHARE: Final = 0.60            # unacceptable reviewed drafts that are edited (else rejected)
# An edited draft keeps between 40 % and 100 % of its acceptability in share of text: a near miss
# (acceptable with probability 0.9) keeps 36-90 % of the draft, a poor one (0.3) only 12-30 %.
_KEPT_MIN: Final = 0.40
_AUDIT_SHARE: Final = 0.05             # auto-sent replies graded by the random audit
_REVENUE_SIGMA: Final = 0.4            # lognormal spread of a won deal's revenue


@dataclass(frozen=True)
class WorldConfig:
    """The knobs of the synthetic company; the defaults are the demo's story."""

    seed: int = 7
    leads_per_week: int = 2000
    emails_per_week: int = 5000
    # Monday 00:00 Europe/Berlin of simulated week 0 (2026-01-05 local), as UTC.
    start: datetime = datetime(2026, 1, 4, 23, 0, tzinfo=UTC)
    lead_source_drift_week: int = 6
    reply_template_drift_week: int = 9


def _shares(table: dict[str, tuple]) -> tuple[list[str], np.ndarray]:
    names = list(table)
    p = np.array([table[k][0] for k in names], dtype=np.float64)
    return names, p / p.sum()


def _effect(column: pl.Series, table: dict[str, tuple[float, float]] | dict[str, float],
            default: float = 0.0) -> np.ndarray:
    """Map a category column to its logit effect (a table's last number); unknown ones get ``default``.

    Unknown categories are expected (a caller may pass anything); they get a neutral effect
    instead of an error so the truth stays defined for every row.
    """
    mapping = {k: float(v[-1]) if isinstance(v, tuple) else float(v) for k, v in table.items()}
    return column.replace_strict(mapping, default=default, return_dtype=pl.Float64).to_numpy()


def _pick(rng: np.random.Generator, names: list[str], p: np.ndarray, n: int) -> pl.Series:
    return pl.Series(names, dtype=pl.String).gather(rng.choice(len(names), size=n, p=p))


def _gamma_poisson(rng: np.random.Generator, mean: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Over-dispersed counts: engagement varies more between people than a Poisson allows."""
    return rng.poisson(mean * rng.gamma(shape, 1.0 / shape, size=mean.shape)).astype(np.float64)


def _to_utc(series: pl.Series) -> pl.Series:
    """Decision timestamps as Datetime('us', 'UTC'); naive timestamps are taken to be UTC."""
    if not isinstance(series.dtype, pl.Datetime):
        raise TypeError(f"decided_at must be a Datetime series, not {series.dtype}")
    if series.dtype.time_zone is None:
        series = series.dt.replace_time_zone("UTC")
    return series.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


class World:
    """The synthetic company: who arrives each week, what is true, and what gets observed."""

    def __init__(self, config: WorldConfig, specs: dict[str, ModelSpec]) -> None:
        missing = [m for m in MODELS if m not in specs]
        if missing:
            raise ValueError(f"the simulator needs specs for {missing}")
        self.config = config
        self.specs = {m: specs[m] for m in MODELS}
        self._check_specs()

    # ---------------------------------------------------------------- contract with the specs
    def _check_specs(self) -> None:
        """Fail at construction, not mid-demo, if a spec and the simulator disagree.

        The specs' feature names are the contract; the simulator generates exactly those, and its
        pre-drift categories must be ones the spec knows (the drift categories are meant to be new).
        """
        generated = {
            "lead_scoring": {
                "source": ("categorical", set(_LEAD_SOURCES)),
                "industry": ("categorical", set(_LEAD_INDUSTRIES)),
                "region": ("categorical", set(_LEAD_REGIONS)),
                "company_size": ("numeric", set()),
                "pages_visited": ("numeric", set()),
                "email_opens": ("numeric", set()),
                "requested_demo": ("boolean", set()),
            },
            "reply_acceptance": {
                "intent": ("categorical", set(_REPLY_INTENTS)),
                "language": ("categorical", set(_LANGUAGES)),
                "customer_tier": ("categorical", set(_TIERS)),
                "template_id": ("categorical", {v[1] for v in _REPLY_INTENTS.values()}),
                "message_length": ("numeric", set()),
                "has_attachment": ("boolean", set()),
            },
        }
        for model, columns in generated.items():
            spec = self.specs[model]
            if set(spec.feature_names) != set(columns):
                raise ValueError(f"spec '{model}' has features {sorted(spec.feature_names)}; "
                                 f"the simulator generates {sorted(columns)}")
            for feature in spec.features:
                kind, categories = columns[feature.name]
                if feature.type != kind:
                    raise ValueError(f"spec '{model}': feature '{feature.name}' is {feature.type}, "
                                     f"the simulator generates it as {kind}")
                unknown = categories - set(feature.categories)
                if unknown:
                    raise ValueError(f"spec '{model}': feature '{feature.name}' lacks categories "
                                     f"{sorted(unknown)} that the simulator generates before any drift")

    def _spec(self, model: str) -> ModelSpec:
        if model not in self.specs:
            raise ValueError(f"unknown model '{model}'; expected one of {MODELS}")
        return self.specs[model]

    def _rng(self, model: str, week: int) -> np.random.Generator:
        """One independent stream per (seed, model, week): weeks can be generated in any order."""
        return np.random.default_rng(np.random.SeedSequence([self.config.seed, MODELS.index(model), week]))

    # ---------------------------------------------------------------- time
    def week_start(self, week: int) -> datetime:
        """Monday 00:00 Europe/Berlin of simulated week ``week``, as UTC.

        Computed in Berlin wall-clock time so a week still starts at local midnight after the
        switch to summer time (then 22:00 UTC instead of 23:00).
        """
        local = self.config.start.astimezone(_BERLIN)
        monday = (local + timedelta(weeks=week)).replace(tzinfo=None)
        return monday.replace(tzinfo=_BERLIN).astimezone(UTC)

    def _arrivals(self, rng: np.random.Generator, week: int, n: int,
                  day_weights: np.ndarray, peak_hour: float) -> pl.Series:
        """Sorted arrival times: mostly on weekdays, bunched around office hours."""
        start = self.week_start(week)
        length_us = int((self.week_start(week + 1) - start) / timedelta(microseconds=1))
        day = rng.choice(7, size=n, p=day_weights / day_weights.sum())
        hour = np.clip(rng.normal(peak_hour, 3.0, size=n), 0.0, 23.999)
        offset = (day * _US_PER_DAY + hour * _US_PER_HOUR).astype(np.int64)
        offset = np.sort(np.minimum(offset, length_us - 1))
        start_us = int(start.timestamp()) * 1_000_000
        return pl.from_epoch(pl.Series(offset + start_us, dtype=pl.Int64), time_unit="us") \
            .dt.replace_time_zone("UTC").alias("arrived_at")

    # ---------------------------------------------------------------- populations
    def population(self, model: str, week: int) -> pl.DataFrame:
        """The entities arriving in simulated week ``week`` (0-based), features and hidden truth.

        Columns: ``entity_ref`` (a raw, personal-looking identifier the caller pseudonymises),
        ``arrived_at``, the spec's features in spec order, then hidden ``_``-columns holding the
        uniform draws that realise outcomes and delays, so every policy sees the same draws.
        """
        spec = self._spec(model)
        if week < 0:
            raise ValueError(f"week must be >= 0, not {week}")
        rng = self._rng(model, week)
        if model == "lead_scoring":
            frame = self._leads(rng, week)
        else:
            frame = self._messages(rng, week)
        hidden = [c for c in frame.columns if c.startswith("_")]
        return frame.select(["entity_ref", "arrived_at", *spec.feature_names, *hidden])

    def _leads(self, rng: np.random.Generator, week: int) -> pl.DataFrame:
        n = self.config.leads_per_week
        arrived = self._arrivals(rng, week, n, np.array([20, 20, 19, 18, 15, 5, 3], float), 11.0)
        names, p = _shares(_LEAD_SOURCES)
        if week >= self.config.lead_source_drift_week:
            names, p = [*names, NEW_LEAD_SOURCE], np.append(p * (1.0 - _NEW_SOURCE_SHARE), _NEW_SOURCE_SHARE)
        source_code = rng.choice(len(names), size=n, p=p)
        source = pl.Series(names, dtype=pl.String).gather(source_code)
        engagement = np.array([_LEAD_ENGAGEMENT[s] for s in names])[source_code]
        demo = rng.random(n) < engagement[:, 0]
        # Bot-driven marketplace engagement is uniformly high; people's engagement varies a lot.
        shape = np.where((source == NEW_LEAD_SOURCE).to_numpy(), 6.0, 2.0)
        pages = np.minimum(_gamma_poisson(rng, engagement[:, 1] * np.where(demo, 1.6, 1.0), shape), 40.0)
        opens = np.minimum(_gamma_poisson(rng, engagement[:, 2] * np.where(demo, 1.3, 1.0), shape), 20.0)
        size = np.clip(np.round(rng.lognormal(np.log(80.0), 1.2, size=n)), 10.0, 5000.0)
        industry = _pick(rng, *_shares(_LEAD_INDUSTRIES), n)
        region = _pick(rng, *_shares(_LEAD_REGIONS), n)
        number = pl.int_range(n, eager=True).cast(pl.String).str.zfill(6)
        return pl.DataFrame({
            "entity_ref": (f"lead-w{week:02d}-" + number + "@kunde-example.de"),
            "arrived_at": arrived,
            "source": source,
            "industry": industry,
            "region": region,
            "company_size": size,
            "pages_visited": pages,
            "email_opens": opens,
            "requested_demo": demo,
            "_draw": rng.random(n),        # converts iff _draw < p(decision)
            "_u_kind": rng.random(n),      # lost vs. no event for non-converted leads
            "_u_delay": rng.random(n),     # when the outcome is recorded
            "_z_revenue": rng.standard_normal(n),
        })

    def _messages(self, rng: np.random.Generator, week: int) -> pl.DataFrame:
        n = self.config.emails_per_week
        arrived = self._arrivals(rng, week, n, np.array([22, 19, 18, 18, 16, 4, 3], float), 10.5)
        names, p = _shares(_REPLY_INTENTS)
        intent_code = rng.choice(len(names), size=n, p=p)
        intent = pl.Series(names, dtype=pl.String).gather(intent_code)
        templates = [_REPLY_INTENTS[k][1] for k in names]
        if week >= self.config.reply_template_drift_week:
            templates = [NEW_RETURN_TEMPLATE if k == "return" else t for k, t in zip(names, templates)]
        template = pl.Series(templates, dtype=pl.String).gather(intent_code)
        median_length = np.array([_REPLY_INTENTS[k][2] for k in names])[intent_code]
        length = np.clip(np.round(median_length * rng.lognormal(0.0, 0.6, size=n)), 80.0, 3000.0)
        attachment = rng.random(n) < np.array([_REPLY_INTENTS[k][3] for k in names])[intent_code]
        language = _pick(rng, *_shares(_LANGUAGES), n)
        tier = _pick(rng, *_shares(_TIERS), n)
        number = pl.int_range(n, eager=True).cast(pl.String).str.zfill(6)
        return pl.DataFrame({
            "entity_ref": (f"msg-w{week:02d}-" + number + "@mail.example"),
            "arrived_at": arrived,
            "intent": intent,
            "language": language,
            "customer_tier": tier,
            "template_id": template,
            "message_length": length,
            "has_attachment": attachment,
            "_draw": rng.random(n),          # acceptable iff _draw < a(x)
            "_u_kind": rng.random(n),        # edited vs. rejected, customer follow-up
            "_u_delay": rng.random(n),       # when the review / follow-up happens
            "_u_audit": rng.random(n),       # audited iff auto-sent and _u_audit < 5%
            "_u_audit_delay": rng.random(n),
        })

    # ---------------------------------------------------------------- truth
    def _check_decisions(self, spec: ModelSpec, population: pl.DataFrame, decisions: pl.Series) -> np.ndarray:
        """Decisions as a boolean 'took the positive action' array; rejects unknown decisions."""
        if decisions.len() != population.height:
            raise ValueError(f"{decisions.len()} decisions for {population.height} rows")
        decisions = decisions.cast(pl.String)
        bad = ~decisions.is_in(list(spec.decisions)) | decisions.is_null()
        if bad.any():
            raise ValueError(f"decisions must be {spec.decisions}; got e.g. {decisions.filter(bad).head(3).to_list()}")
        return (decisions == spec.positive_decision).to_numpy()

    def _p_meeting(self, population: pl.DataFrame) -> np.ndarray:
        """True conversion probability of a lead that gets a meeting proposed."""
        source = population["source"]
        demo = population["requested_demo"].to_numpy().astype(np.float64)
        log_size = np.log(np.maximum(population["company_size"].to_numpy(), 1.0) / 100.0)
        context = (_effect(population["industry"], _LEAD_INDUSTRIES)
                   + _effect(population["region"], _LEAD_REGIONS) + _SIZE_EFFECT * log_size)
        regular = (_LEAD_INTERCEPT + _effect(source, _LEAD_SOURCES) + context + _DEMO_EFFECT * demo
                   + _PAGES_EFFECT * np.log1p(np.maximum(population["pages_visited"].to_numpy(), 0.0))
                   + _OPENS_EFFECT * np.log1p(np.maximum(population["email_opens"].to_numpy(), 0.0)))
        marketplace = _MARKETPLACE_INTERCEPT + context + _MARKETPLACE_DEMO_EFFECT * demo
        return _sigmoid(np.where((source == NEW_LEAD_SOURCE).to_numpy(), marketplace, regular))

    def _acceptability(self, population: pl.DataFrame) -> np.ndarray:
        """True probability that a drafted reply is acceptable as is."""
        length = np.maximum(population["message_length"].to_numpy(), 1.0)
        logit = (_effect(population["template_id"], _TEMPLATE_LOGIT)
                 + _effect(population["language"], _LANGUAGES)
                 + _effect(population["customer_tier"], _TIERS)
                 + _LENGTH_EFFECT * np.log(length / 300.0)
                 + _ATTACHMENT_EFFECT * population["has_attachment"].to_numpy().astype(np.float64))
        return _sigmoid(logit)

    def _p_both(self, model: str, population: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(P(positive | positive decision), P(positive | negative decision)) per row."""
        if model == "lead_scoring":
            p_meeting = self._p_meeting(population)
            return p_meeting, (1.0 - _MEETING_EFFECT) * p_meeting
        a = self._acceptability(population)
        return a, a

    def true_probability(self, model: str, population: pl.DataFrame, decisions: pl.Series) -> pl.Series:
        """P(positive outcome | features, decision): converted for leads, acceptable for replies."""
        positive = self._check_decisions(self._spec(model), population, decisions)
        p_pos, p_neg = self._p_both(model, population)
        return pl.Series("true_probability", np.where(positive, p_pos, p_neg), dtype=pl.Float64)

    def _value(self, model: str, positive: np.ndarray, success: np.ndarray) -> np.ndarray:
        """EUR per row from the spec's objective; works on 0/1 outcomes and on probabilities."""
        o = self.specs[model].objective
        if model == "lead_scoring":
            return o.value_per_conversion * success - o.cost_per_action * positive
        return positive * (o.value_per_action * success - o.cost_per_failure * (1.0 - success))

    def expected_value(self, model: str, population: pl.DataFrame, decisions: pl.Series) -> pl.Series:
        """Expected EUR per row of a policy's decisions under the true probabilities.

        Noise-free, so it is the fairest yardstick for comparing policies on one week.
        """
        positive = self._check_decisions(self._spec(model), population, decisions).astype(np.float64)
        p = self.true_probability(model, population, decisions).to_numpy()
        return pl.Series("expected_value", self._value(model, positive, p), dtype=pl.Float64)

    def realise(self, model: str, population: pl.DataFrame, decisions: pl.Series) -> pl.DataFrame:
        """The ground truth of one policy's decisions: success and EUR value per row.

        Uses the population's own ``_draw`` with ``success = _draw < p(decision)``: since a
        nurtured lead's chance is below its meeting chance, a lead that converts when nurtured
        also converts with a meeting, and policies differ only where their decisions differ.
        """
        positive = self._check_decisions(self._spec(model), population, decisions)
        p = self.true_probability(model, population, decisions).to_numpy()
        success = population["_draw"].to_numpy() < p
        value = self._value(model, positive.astype(np.float64), success.astype(np.float64))
        return pl.DataFrame({"success": success, "value": value},
                            schema={"success": pl.Boolean, "value": pl.Float64})

    def oracle_decisions(self, model: str, population: pl.DataFrame) -> pl.Series:
        """The expected-value-maximising action per entity, knowing the true probabilities.

        Ignores the lead spec's weekly meeting capacity: the oracle is the per-entity optimum.
        """
        spec = self._spec(model)
        o = spec.objective
        p_pos, p_neg = self._p_both(model, population)
        if model == "lead_scoring":
            act = o.value_per_conversion * (p_pos - p_neg) > o.cost_per_action
        else:
            act = o.value_per_action * p_pos - o.cost_per_failure * (1.0 - p_pos) > 0.0
        return pl.Series("decision", np.where(act, spec.positive_decision, spec.negative_decision),
                         dtype=pl.String)

    # ---------------------------------------------------------------- what the company sees
    def outcome_events(self, model: str, population: pl.DataFrame, decisions: pl.Series,
                       action_ids: pl.Series, decided_at: pl.Series) -> pl.DataFrame:
        """The outcomes the company observes, with realistic delays, one row per event.

        Truth stays hidden: a lead either converts (with revenue), is marked lost, or simply goes
        quiet; a reviewed draft is accepted, edited (with the share of the draft kept) or rejected;
        an auto-sent reply only shows the customer's reaction, plus an exact grade for the small
        random audit sample. All
        randomness comes from the population's hidden columns, so the same call gives the same
        events and the events agree with ``realise``.
        """
        spec = self._spec(model)
        n = population.height
        if action_ids.len() != n or decided_at.len() != n:
            raise ValueError(f"action_ids ({action_ids.len()}) and decided_at ({decided_at.len()}) "
                             f"must align with the {n} population rows")
        success = self.realise(model, population, decisions)["success"]
        base = pl.concat([
            pl.DataFrame({
                "action_id": action_ids.cast(pl.String),
                "decided_at": _to_utc(decided_at),
                "positive": (decisions.cast(pl.String) == spec.positive_decision),
                "success": success,
            }),
            population.select(pl.col("^_.*$")),
        ], how="horizontal")
        schema = {"action_id": pl.String, "observed_at": _DATETIME, "outcome": pl.String,
                  "revenue": pl.Float64, "share_kept": pl.Float64}
        s, u, d = pl.col("success"), pl.col("_u_kind"), pl.col("_u_delay")

        if model == "lead_scoring":
            vpc = spec.objective.value_per_conversion
            outcome = (pl.when(s).then(pl.lit("converted"))
                       .when(u < _LOST_SHARE).then(pl.lit("lost"))
                       .otherwise(pl.lit(None, dtype=pl.String)))
            # Sales closes a lead, won or lost, 3..30 days later, most in the first two weeks. The
            # same cycle for both keeps young labels unbiased; leads never closed count as lost
            # only once the spec's maturity window has passed.
            delay_days = 3.0 + 27.0 * d.pow(1.5)
            revenue = pl.when(s).then(
                (vpc * (_REVENUE_SIGMA * pl.col("_z_revenue") - _REVENUE_SIGMA**2 / 2).exp()).round(2))
            events = base.select(
                "action_id",
                (pl.col("decided_at") + pl.duration(microseconds=(delay_days * _US_PER_DAY).cast(pl.Int64)))
                .alias("observed_at"),
                outcome.alias("outcome"),
                revenue.cast(pl.Float64).alias("revenue"),
                pl.lit(None, dtype=pl.Float64).alias("share_kept"),
            ).filter(pl.col("outcome").is_not_null())
        else:
            auto = pl.col("positive")
            reviewed = (pl.when(s).then(pl.lit("accepted"))
                        .when(u < _EDITED_SHARE).then(pl.lit("edited")).otherwise(pl.lit("rejected")))
            # The follow-up is an imperfect signal of the draft's quality: a good reply is sometimes
            # followed by a new question, a bad one sometimes by silence.
            follow_up = (pl.when(s & (u < _RESOLVED_IF_ACCEPTABLE)).then(pl.lit("resolved"))
                         .when(s).then(pl.lit("recontacted"))
                         .when(u < _COMPLAINED_IF_NOT).then(pl.lit("complained"))
                         .when(u < _COMPLAINED_IF_NOT + _RECONTACTED_IF_NOT).then(pl.lit("recontacted"))
                         .otherwise(pl.lit("resolved")))
            # A person reviews within 2..20 hours; a customer reacts 6..48 hours after sending.
            delay_hours = pl.when(auto).then(6.0 + 42.0 * d).otherwise(2.0 + 18.0 * d)
            # Given an edit (u < _EDITED_SHARE), u / _EDITED_SHARE is uniform and no other draw is spent.
            kept = (pl.lit(self._acceptability(population))
                    * (_KEPT_MIN + (1.0 - _KEPT_MIN) * u / _EDITED_SHARE)).round(2)
            main = base.select(
                "action_id",
                (pl.col("decided_at") + pl.duration(microseconds=(delay_hours * _US_PER_HOUR).cast(pl.Int64)))
                .alias("observed_at"),
                pl.when(auto).then(follow_up).otherwise(reviewed).alias("outcome"),
                pl.lit(None, dtype=pl.Float64).alias("revenue"),
                pl.when(~auto & ~s & (u < _EDITED_SHARE)).then(kept).alias("share_kept"),
            )
            audit_hours = 50.0 + 20.0 * pl.col("_u_audit_delay")
            audit = base.filter(auto & (pl.col("_u_audit") < _AUDIT_SHARE)).select(
                "action_id",
                (pl.col("decided_at") + pl.duration(microseconds=(audit_hours * _US_PER_HOUR).cast(pl.Int64)))
                .alias("observed_at"),
                pl.when(s).then(pl.lit("audit_pass")).otherwise(pl.lit("audit_fail")).alias("outcome"),
                pl.lit(None, dtype=pl.Float64).alias("revenue"),
                pl.lit(None, dtype=pl.Float64).alias("share_kept"),
            )
            events = pl.concat([main, audit])
        return events.cast(schema).sort("observed_at", "action_id", maintain_order=True)


def _drift_report(weeks: int = 12) -> None:
    """Print weekly oracle and frozen-policy value, to check that the drifts cost real money.

    The frozen policy keeps its pre-drift behaviour: the pre-drift oracle rule applied to the
    features, with the new lead source treated like an average source (website_form, whose effect
    is ~ the mix average) and the new returns template treated like the old one.
    """
    import time
    from pathlib import Path

    from features.spec import load_specs

    specs = load_specs(Path(__file__).resolve().parents[1] / "data" / "specs")
    world = World(WorldConfig(), specs)
    t0 = time.perf_counter()
    for model in MODELS:
        pop = world.population(model, 0)
        dec = world.oracle_decisions(model, pop)
        world.realise(model, pop, dec)
        world.outcome_events(model, pop, dec, pop["entity_ref"],
                             pl.Series([world.week_start(0)] * pop.height))
    print(f"one week, both models (population + oracle + realise + events): {time.perf_counter() - t0:.3f} s")
    for model, column, new, old in (("lead_scoring", "source", NEW_LEAD_SOURCE, "website_form"),
                                    ("reply_acceptance", "template_id", NEW_RETURN_TEMPLATE, "ret_v1")):
        print(f"\n{model}: week  oracle_EV  frozen_EV  loss  oracle_realised  positive_share  mean_p")
        for week in range(weeks):
            pop = world.population(model, week)
            oracle = world.oracle_decisions(model, pop)
            frozen = world.oracle_decisions(model, pop.with_columns(pl.col(column).replace(new, old)))
            ev_o = world.expected_value(model, pop, oracle).sum()
            ev_f = world.expected_value(model, pop, frozen).sum()
            real = world.realise(model, pop, oracle)["value"].sum()
            share = (oracle == specs[model].positive_decision).mean()
            mean_p = world.true_probability(model, pop, oracle).mean()
            print(f"  {week:>4}  {ev_o:>9.0f}  {ev_f:>9.0f}  {1 - ev_f / ev_o:>5.1%}  {real:>15.0f}"
                  f"  {share:>14.2f}  {mean_p:.3f}")


if __name__ == "__main__":
    _drift_report()
