"""Registry-scale, EHR-only cohorts: life-long registry histories drawn a block of people at a time.

With ``registry_history=true`` the sandbox draws the same people, latent causes, outcomes,
censoring and labels as ``subject.py`` (latent.py, outcomes.py), but as arrays over a block of
``BLOCK`` people, with no notes, images or genomes written, and each person's EHR is a life-long
registry history: from 1977 (``registry_start``) or birth, if later, to the end of their record
(the data cutoff, loss to follow-up, or death: mortality.py, which also draws liver disease,
K76, on a random stream of its own). The history is made of

- healthcare contacts at a rate that grows with age, scaled by a frailty (log-normal, independent
  of every latent cause) and by the metabolic burden m: each records a diagnosis, sometimes a
  prescription and a lab panel (the three NPU labs of ehr.py and a few others), with codes drawn
  from long-tailed (Zipf) ICD-10, ATC and NPU vocabularies;
- chronic conditions, whose presence and onset age follow m (metabolic ones) or chance (the others):
  after onset, repeated diagnosis codes, regular prescriptions and disease-specific labs. With
  ``comorbidity`` (the default) the cardiometabolic ones follow comorbidity.py's trajectories
  instead (a DAG of hazard ratios, hazards growing with age), every condition is diagnosed at
  onset, HbA1c and creatinine drift after E11 and N18, and I21's risk weighs the conditions
  diagnosed by the prediction time (``outcome_disease``).

People with several chronic conditions and high frailty make the heavy tail (thousands of events);
the mean per person is ``events_per_person``, set by one constant calibrated on a fixed reference
population (so it never depends on who is in the cohort). The history sees only m, age, sex, the
diagnosed conditions and noise, as ``SEEN_BY[ehr_codes]`` in oracle.py says, so the oracle figures
stay the ceilings. It never records an outcome's code (I21, E10), so labels and ACES tasks are
those of the latent model.

Randomness comes from ``SeedSequence(seed, spawn_key=(block, 1))`` per block of ``BLOCK`` people; a
shard draws the blocks it overlaps and keeps its own people, so the output is the same whatever
``shard_size`` and ``workers``. Every step is a numpy operation over the block's events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.signal import lfilter

from medweave.data import contract as c
from medweave.sandbox import comorbidity, ehr, mortality, registry_genomes
from medweave.sandbox.latent import Disease, sigmoid

BLOCK = 1000  # people per random stream
SECOND_PER_YEAR = 365.25 * 86400
AGE_SLOPE = 0.03  # background contacts per year grow by 3 % per year of age
FRAILTY_SD = 1.0  # log-normal utilisation: the spread of events per person
METABOLIC_CONTACTS = 0.35  # log-rate of background contacts per unit of m
RX_SHARE, LAB_SHARE = 0.4, 0.35  # a background contact's chance of a prescription, of a lab panel
EXTRA_LABS = 2.0  # mean labs beyond the three standard ones in a panel (1 + Poisson(1))
ZIPF = 1.1  # code frequency ~ rank^-ZIPF
VOCABULARY = {"ICD10": 2000, "ATC": 800, "NPU": 300}

# Chronic conditions: code, description, log-odds of ever having it (a + b m), mean onset age (minus
# 3 years per unit of m for the metabolic ones), diagnosis contacts per year after onset,
# prescription (redeemed 4 times a year) and lab measured twice a year after onset.
CHRONIC = [
    ("ICD10//E11", "Type 2 diabetes mellitus", -2.0, 1.4, 55, 3.0, "ATC//A10BA02", ehr.HBA1C),
    ("ICD10//I10", "Essential hypertension", -1.0, 1.1, 52, 2.0, "ATC//C09AA05", "NPU//NPU18016"),
    (
        "ICD10//E78",
        "Disorders of lipoprotein metabolism",
        -1.4,
        1.1,
        50,
        1.0,
        "ATC//C10AA01",
        "NPU//NPU01568",
    ),
    ("ICD10//E66", "Obesity", -1.8, 0.9, 40, 1.0, None, None),
    ("ICD10//N18", "Chronic kidney disease", -3.2, 0.8, 65, 3.0, None, "NPU//NPU18016"),
    ("ICD10//I50", "Heart failure", -3.4, 0.7, 68, 4.0, "ATC//C03CA01", None),
    ("ICD10//I48", "Atrial fibrillation and flutter", -3.0, 0.5, 66, 2.0, "ATC//B01AF01", None),
    ("ICD10//J44", "Chronic obstructive pulmonary disease", -2.9, 0.4, 60, 3.0, "ATC//R03AL03", None),
    ("ICD10//J45", "Asthma", -2.5, 0.0, 15, 1.5, "ATC//R03AC02", None),
    ("ICD10//F32", "Depressive episode", -2.2, 0.0, 35, 3.0, "ATC//N06AB10", None),
    ("ICD10//M06", "Rheumatoid arthritis", -3.8, 0.0, 50, 4.0, "ATC//L04AX03", None),
    ("ICD10//G40", "Epilepsy", -4.0, 0.0, 20, 3.0, "ATC//N03AX09", None),
    ("ICD10//F20", "Schizophrenia", -4.3, 0.0, 25, 12.0, "ATC//N05AH03", None),
]
CHRONIC_CODES = [row[0] for row in CHRONIC]
CHRONIC_DESCRIPTIONS = {
    "ATC//C03CA01": "Furosemide",
    "ATC//B01AF01": "Rivaroxaban",
    "ATC//R03AL03": "Vilanterol and umeclidinium bromide",
    "ATC//R03AC02": "Salbutamol",
    "ATC//N06AB10": "Escitalopram",
    "ATC//L04AX03": "Methotrexate",
    "ATC//N03AX09": "Lamotrigine",
    "ATC//N05AH03": "Olanzapine",
}
CHRONIC_RX_PER_YEAR, CHRONIC_LABS_PER_YEAR = 4.0, 2.0
# As Danish registries: hospital diagnoses from registry_start (1977), prescriptions redeemed
# from 1995 (the National Prescription Registry), laboratory results from 2000.
PRESCRIPTIONS_FROM, LABS_FROM = "1995-01-01", "2000-01-01"
REFERENCE_SEED = 505  # the calibration population is the same for every cohort
CALIBRATION_PEOPLE = 200_000  # its mean's standard error is about 0.3 % of the mean
# The standard lab panel and how ehr.draw_events draws its values: (code, mean, per unit of m, sd).
STANDARD_LABS = [
    (ehr.HBA1C, 38.0, 6.0, 4.0),
    ("NPU//NPU01568", 2.9, 0.5, 0.6),
    ("NPU//NPU18016", 80.0, 0.0, 12.0),
]
CREATININE_PER_DECADE = 8.0


@dataclass(frozen=True)
class Vocabulary:
    """Every code the history may record, and the long-tailed frequency of the background codes."""

    codes: np.ndarray  # str [K]: ehr.CODES first (fixed ids), then the drawn codes
    descriptions: dict[str, str]
    background: dict[str, tuple[np.ndarray, np.ndarray]]  # system -> (code ids, cumulative P)
    lab_mean: np.ndarray  # float [K]: log-normal labs: median value and log-sd, for NPU ids
    lab_log_sd: np.ndarray
    lab_metabolic: np.ndarray  # float [K]: log-value per unit of m (a tenth of the labs)

    def id(self, code: str) -> int:
        return int(np.flatnonzero(self.codes == code)[0])


@lru_cache(maxsize=4)
def vocabulary(seed: int, outcome_codes: tuple[str, ...] = ()) -> Vocabulary:
    """ICD-10 categories, ATC substances and NPU-like lab codes, each system ranked for a Zipf law.
    ``outcome_codes`` (the diseases' codes) are recorded only at onset, never as background."""
    rng = np.random.default_rng([seed, 404])
    chronic = {code for row in CHRONIC for code in (row[0], row[6], row[7]) if code}
    chronic |= set(mortality.DESCRIPTIONS)  # K76 and MEDS_DEATH (mortality.py)
    reserved = set(ehr.CODES) | chronic | set(outcome_codes)
    fixed = list(ehr.CODES)
    fixed += sorted((chronic | set(outcome_codes)) - set(ehr.CODES))
    letters = "ABCDEFGHIJKLMNOPQRSTZ"  # the disease chapters; external causes (V-Y) are a registry apart
    icd = [f"ICD10//{a}{d:02d}" for a in letters for d in range(100)]
    atc_groups = list("ABCDGHJLMNPRSV")
    atc = {
        f"ATC//{rng.choice(atc_groups)}{rng.integers(1, 100):02d}{''.join(rng.choice(list('ABCDEFGHX'), 2))}"
        f"{rng.integers(1, 100):02d}"
        for _ in range(3 * VOCABULARY["ATC"])
    }
    npu = {f"NPU//NPU{rng.integers(1000, 100000):05d}" for _ in range(3 * VOCABULARY["NPU"])}
    drawn: dict[str, list[str]] = {}
    for system, pool in (("ICD10", icd), ("ATC", sorted(atc)), ("NPU", sorted(npu))):
        pool = [code for code in pool if code not in reserved]
        drawn[system] = list(rng.permutation(pool)[: VOCABULARY[system]])  # rank order
    codes = np.array(fixed + drawn["ICD10"] + drawn["ATC"] + drawn["NPU"])
    descriptions = {k: v[0] for k, v in ehr.CODES.items()} | {row[0]: row[1] for row in CHRONIC}
    descriptions |= (
        CHRONIC_DESCRIPTIONS
        | mortality.DESCRIPTIONS
        | {code: f"Outcome {code}" for code in outcome_codes if code not in ehr.CODES}
    )
    names = {"ICD10": "ICD-10 category", "ATC": "ATC substance", "NPU": "NPU-like laboratory test"}
    background, start = {}, len(fixed)
    for system in ("ICD10", "ATC", "NPU"):
        for code in drawn[system]:
            descriptions[code] = f"{names[system]} {code.split('//')[1]} (sandbox vocabulary)"
        ids = np.arange(start, start + len(drawn[system]))
        weight = 1.0 / np.arange(1, len(ids) + 1) ** ZIPF
        background[system] = (ids, np.cumsum(weight) / weight.sum())
        start += len(ids)
    k = len(codes)
    lab_mean = np.exp(rng.uniform(np.log(0.05), np.log(500.0), k))
    lab_log_sd = rng.uniform(0.1, 0.5, k)
    lab_metabolic = np.where(rng.random(k) < 0.1, rng.uniform(0.05, 0.2, k), 0.0)
    return Vocabulary(codes, descriptions, background, lab_mean, lab_log_sd, lab_metabolic)


def cohort_vocabulary(cfg) -> Vocabulary:
    return vocabulary(cfg.seed, tuple(sorted(d.code for d in cfg.diseases.values())))


@dataclass
class People:
    """A block's people as arrays; times are int64 seconds since 1970."""

    male: np.ndarray
    birth: np.ndarray
    prediction: np.ndarray
    metabolic: np.ndarray
    symptoms: np.ndarray
    structural: np.ndarray
    lost_days: np.ndarray  # exponential loss to follow-up (days after prediction_time; inf: never)
    frailty: np.ndarray  # N(0, 1): utilisation beyond the latent causes
    chronic_onset: np.ndarray  # int64 [n, C]: onset time, or a time after every record's end
    liver_onset: np.ndarray | None = None  # int64: K76 onset, or mortality.NEVER (add_mortality)
    death: np.ndarray | None = None  # int64: death after prediction time, or mortality.NEVER
    comorbidity: bool = False  # onsets from comorbidity.py: diagnosed at onset, labs drift after it

    def record(self, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, follow-up days): registry events fall in [start, end); the record ends at
        the data cutoff, at loss to follow-up or at death, whichever comes first."""
        cutoff = _seconds(cfg.follow_up_end)
        administrative = (cutoff - self.prediction) / 86400.0
        follow_up = np.minimum(administrative, self.lost_days)
        end = np.where(
            follow_up < administrative, self.prediction + (follow_up * 86400).astype(np.int64), cutoff
        )
        if self.death is not None:  # a death before the cutoff and the loss ends it there
            dead = self.death < end
            end = np.where(dead, self.death, end)
            follow_up = np.where(dead, (self.death - self.prediction) / 86400.0, follow_up)
        start = np.maximum(self.birth, _seconds(cfg.registry_start))
        return start, end, follow_up


def _seconds(date: str) -> int:
    return int(np.datetime64(date, "s").astype(np.int64))


def draw_people(
    rng: np.random.Generator, n: int, loss_per_year: float, trajectories: np.random.Generator | None = None
) -> People:
    """Demographics and latent causes as latent.draw_person draws them, plus frailty and chronic onsets;
    with ``trajectories`` (a stream apart) the cardiometabolic onsets come from comorbidity.py."""
    birth_day = rng.integers(0, 55 * 365, n) + _seconds("1940-01-01") // 86400
    prediction_day = _seconds("2021-01-01") // 86400 + rng.integers(0, 365, n)
    male = rng.random(n) < 0.5
    birth = birth_day * 86400 + rng.integers(0, 86400, n)
    prediction = prediction_day * 86400 + 12 * 3600
    metabolic, symptoms, structural = rng.standard_normal((3, n))
    lost = rng.exponential(365.25 / loss_per_year, n) if loss_per_year > 0 else np.full(n, np.inf)
    frailty = rng.standard_normal(n)
    a = np.array([row[2] for row in CHRONIC])
    b = np.array([row[3] for row in CHRONIC])
    has = rng.random((n, len(CHRONIC))) < sigmoid(a + b * metabolic[:, None])
    onset_age = np.array([row[4] for row in CHRONIC]) - 3.0 * (b > 0) * metabolic[:, None]
    onset_age = onset_age + rng.normal(0.0, 12.0, (n, len(CHRONIC)))
    onset = birth[:, None] + (np.maximum(onset_age, 0.0) * SECOND_PER_YEAR).astype(np.int64)
    never = np.iinfo(np.int64).max // 2
    onset = np.where(has, onset, never)
    if trajectories is not None:  # the same draws as above, then the DAG's onsets replace theirs
        for code, times in comorbidity.onsets(trajectories, birth, metabolic).items():
            onset[:, CHRONIC_CODES.index(code)] = times
    return People(
        male,
        birth,
        prediction,
        metabolic,
        symptoms,
        structural,
        lost,
        frailty,
        onset,
        comorbidity=trajectories is not None,
    )


def add_mortality(rng: np.random.Generator, people: People, cfg) -> None:
    """K76 onsets and deaths (mortality.py), from their own stream ``rng``."""
    people.liver_onset = mortality.draw_liver_onset(rng, people.birth, people.metabolic)
    people.death = mortality.draw_death(rng, people, people.liver_onset, _seconds(cfg.follow_up_end))


def died(people: People, cfg) -> np.ndarray:
    """Whose record ends at death (before the cutoff and before any loss to follow-up)."""
    if people.death is None:
        return np.zeros(len(people.birth), bool)
    return people.death == people.record(cfg)[1]  # record() ends a record at death exactly


def _contact_scale(people: People) -> np.ndarray:
    """Multiplier of the background contact rate: frailty and m, each with mean 1."""
    return np.exp(
        FRAILTY_SD * people.frailty
        - FRAILTY_SD**2 / 2
        + METABOLIC_CONTACTS * people.metabolic
        - METABOLIC_CONTACTS**2 / 2
    )


def _age_integral(people: People, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Integral of exp(AGE_SLOPE * age) over [start, end], in years."""
    a0 = (start - people.birth) / SECOND_PER_YEAR
    a1 = (end - people.birth) / SECOND_PER_YEAR
    return np.maximum(np.exp(AGE_SLOPE * a1) - np.exp(AGE_SLOPE * a0), 0.0) / AGE_SLOPE


def _chronic_years(
    people: People, start: np.ndarray, end: np.ndarray, since: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per condition, when its events start (onset, the record's start or ``since``, whichever is
    latest) and for how many years they run within the record."""
    first = np.maximum(people.chronic_onset, start[:, None])
    if since is not None:
        first = np.maximum(first, _seconds(since))
    years = np.maximum(end[:, None] - first, 0) / SECOND_PER_YEAR
    return first, years


def _chronic_rates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dx = np.array([row[5] for row in CHRONIC])
    rx = np.array([CHRONIC_RX_PER_YEAR * (row[6] is not None) for row in CHRONIC])
    lab = np.array([CHRONIC_LABS_PER_YEAR * (row[7] is not None) for row in CHRONIC])
    return dx, rx, lab


def expected_events(people: People, cfg) -> np.ndarray:
    """Each person's expected number of history events before the calibration constant."""
    start, end, _ = people.record(cfg)
    rx_start = np.maximum(start, _seconds(PRESCRIPTIONS_FROM))
    lab_start = np.maximum(start, _seconds(LABS_FROM))
    background = _contact_scale(people) * (
        _age_integral(people, start, end)
        + RX_SHARE * _age_integral(people, rx_start, end)
        + LAB_SHARE * (len(STANDARD_LABS) + EXTRA_LABS) * _age_integral(people, lab_start, end)
    )
    dx, rx, lab = _chronic_rates()
    scale = np.exp(0.5 * people.frailty - 0.125)
    chronic = (_chronic_years(people, start, end)[1] * dx * scale[:, None]).sum(1)
    chronic += (_chronic_years(people, start, end, PRESCRIPTIONS_FROM)[1] * rx).sum(1)
    chronic += (_chronic_years(people, start, end, LABS_FROM)[1] * lab).sum(1)
    if people.comorbidity:  # each condition's diagnosis at onset (or the record's start)
        chronic += (np.maximum(people.chronic_onset, start[:, None]) < end[:, None]).sum(1)
    if people.liver_onset is not None:
        chronic += mortality.liver_years(people.liver_onset, start, end)[1] * mortality.LIVER_CONTACTS * scale
    return background + chronic


@lru_cache(maxsize=8)
def _reference_mean(
    registry_start: str, follow_up_end: str, loss_per_year: float, trajectories: bool
) -> float:
    """Mean expected history events of a fixed reference population, before scaling."""
    window = SimpleNamespace(registry_start=registry_start, follow_up_end=follow_up_end)
    dag = np.random.default_rng([REFERENCE_SEED, 4]) if trajectories else None
    people = draw_people(np.random.default_rng(REFERENCE_SEED), CALIBRATION_PEOPLE, loss_per_year, dag)
    add_mortality(np.random.default_rng([REFERENCE_SEED, 2]), people, window)
    return float(expected_events(people, window).mean())


def rate_scale(cfg) -> float:
    """The one constant that makes the mean events per person ``events_per_person``."""
    reference = _reference_mean(
        cfg.registry_start, cfg.follow_up_end, float(cfg.loss_per_year), bool(cfg.comorbidity)
    )
    return float(cfg.events_per_person) / reference


def draw_genetic_scores(panel, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Standardised polygenic scores of n simulated genotypes (genomics.draw_genotype's model)."""
    rho = panel.ld_rho
    noise = rng.standard_normal((n, 2, panel.n_variants), dtype=np.float32)  # half the time of float64
    noise[..., 0] /= np.sqrt(1 - rho**2)
    z = lfilter([np.sqrt(1 - rho**2)], [1, -rho], noise, axis=2)
    dosage = (z < panel.threshold).sum(1, dtype=np.int8).astype(np.float64)
    out = {}
    for name, effect in panel.effects.items():
        mean, sd = panel.score_mean_sd(name)
        out[name] = (dosage @ effect - mean) / sd
    return out


class _Events:
    """Columns of a block's events, appended a kind at a time: person, time, code id, value."""

    def __init__(self):
        self.person, self.time, self.code, self.value = [], [], [], []

    def add(self, person, time, code, value=None):
        person = np.asarray(person, np.int64)
        self.person.append(person)
        self.time.append(np.broadcast_to(np.asarray(time, np.int64), person.shape))
        self.code.append(np.broadcast_to(np.asarray(code, np.int64), person.shape))
        value = np.full(person.shape, np.nan) if value is None else np.asarray(value, np.float64)
        self.value.append(np.broadcast_to(value, person.shape))

    def arrays(self):
        return tuple(np.concatenate(x) for x in (self.person, self.time, self.code, self.value))


def _uniform_times(rng, person, start, end) -> np.ndarray:
    """One time per row, uniform in [start, end) of that row's person or segment."""
    span = (end - start).astype(np.float64)
    return start + np.minimum(np.floor(rng.random(len(person)) * span), np.maximum(span - 1, 0)).astype(
        np.int64
    )


def _zipf(rng, vocab: Vocabulary, system: str, n: int) -> np.ndarray:
    ids, cdf = vocab.background[system]
    return ids[np.minimum(np.searchsorted(cdf, rng.random(n)), len(ids) - 1)]


def draw_block(cfg, panel, block: int, n: int) -> dict:
    """Everything about the block's n people: truth, outcomes and their events, sorted by person and time."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(block, 1)))
    vocab, k = cohort_vocabulary(cfg), rate_scale(cfg)
    dag = comorbidity.stream(cfg.seed, block) if cfg.comorbidity else None
    people = draw_people(rng, n, cfg.loss_per_year, dag)
    later = mortality.stream(cfg.seed, block)  # K76 and deaths: a stream apart (mortality.py)
    add_mortality(later, people, cfg)
    genetic = (  # genomes for a subset: every score from founder mosaics (registry_genomes.py)
        registry_genomes.block_scores(cfg, panel, block, n)
        if cfg.genome_subjects
        else draw_genetic_scores(panel, rng, n)
    )
    age = (people.prediction - people.birth) / (365.25 * 86400)
    x = {
        "genetic_cvd": genetic["cvd"],
        "genetic_t1d": genetic["t1d"],
        "metabolic": people.metabolic,
        "symptoms": people.symptoms,
        "structural": people.structural,
        "age": (age - 60.0) / 10.0,
        "male": people.male.astype(float),
    }
    start, end, follow_up = people.record(cfg)
    truth = {f"genetic_{name}": v for name, v in genetic.items()}
    truth |= {"metabolic": people.metabolic, "symptoms": people.symptoms, "structural": people.structural}
    truth |= {"age_years": age, "male": x["male"]}
    if people.comorbidity:  # which conditions the record shows by the prediction time (comorbidity.py)
        diagnosed = np.maximum(people.chronic_onset, start[:, None]) < people.prediction[:, None]
        for code, *_ in comorbidity.TRAJECTORIES:
            x[comorbidity.factor(code)] = diagnosed[:, CHRONIC_CODES.index(code)].astype(float)
            truth[comorbidity.factor(code)] = x[comorbidity.factor(code)]
    events, outcomes, onset_days = _Events(), {}, {}
    everyone = np.arange(n)
    u = rng.random((n, len(cfg.diseases)))
    for j, (name, disease) in enumerate(cfg.diseases.items()):
        risk = sigmoid(outcome_disease(cfg, disease).liability(x, comorbidity.DIAGNOSED))
        hazard = -np.log1p(-np.minimum(risk, 1 - 1e-12)) / cfg.horizon_days
        days = -np.log1p(-u[:, j]) / hazard
        truth[f"risk_{name}"], truth[f"event_days_{name}"] = risk, days
        seen = days <= follow_up
        outcomes[name] = (days <= cfg.horizon_days, np.minimum(days, follow_up), seen)
        onset_days[name] = days
        who = everyone[seen]
        events.add(
            who, people.prediction[seen] + (days[seen] * 86400).astype(np.int64), vocab.id(disease.code)
        )
    truth |= {f"has_{m}": np.zeros(n, bool) for m in (c.TEXT, c.IMAGE, c.GENOMICS)}

    static = -(2**32)  # before any time drawn (1940 on): sorts first, the null time of static events
    events.add(everyone, static, np.where(people.male, vocab.id("SEX//M"), vocab.id("SEX//F")))
    events.add(everyone, people.birth, vocab.id("MEDS_BIRTH"))
    events.add(everyone, people.prediction, vocab.id(ehr.INDEX))
    dead = died(people, cfg)
    lost = (end < _seconds(cfg.follow_up_end)) & ~dead
    events.add(everyone[lost], end[lost], vocab.id(ehr.LOST))
    _draw_history(rng, cfg, vocab, k, people, start, end, events)
    _draw_liver_and_death(later, vocab, k, people, start, end, dead, events)
    # the latent death (recorded unless loss to follow-up came first), as event_days_<disease>
    alive = people.death >= mortality.NEVER
    truth["death_days"] = np.where(alive, np.inf, (people.death - people.prediction) / 86400.0)
    truth["liver_onset_age"] = np.where(
        people.liver_onset < mortality.NEVER, (people.liver_onset - people.birth) / SECOND_PER_YEAR, np.inf
    )

    person, time, code, value = events.arrays()
    # one stable sort on (person, time) packed in an int64, twice as fast as lexsort; ties keep the
    # order drawn. Times are seconds in [-2**32, 2**32), 1834 to 2106.
    order = np.argsort((person << 33) | (time + 2**32), kind="stable")
    person, time, code, value = person[order], time[order], code[order], value[order]
    return {
        "people": people,
        "truth": truth,
        "outcomes": outcomes,
        "onset_days": onset_days,
        "events": (person, time, code, value),
        "static_time": static,
    }


def _draw_history(rng, cfg, vocab: Vocabulary, k: float, people: People, start, end, events: _Events) -> None:
    n = len(people.birth)
    everyone = np.arange(n)
    # Background contacts: a Poisson count, times from the age-growing intensity (inverse CDF).
    mean = k * _contact_scale(people) * _age_integral(people, start, end)
    count = rng.poisson(mean)
    who = np.repeat(everyone, count)
    a0 = np.exp(AGE_SLOPE * (start - people.birth) / SECOND_PER_YEAR)[who]
    a1 = np.exp(AGE_SLOPE * (end - people.birth) / SECOND_PER_YEAR)[who]
    age = np.log(a0 + rng.random(len(who)) * (a1 - a0)) / AGE_SLOPE
    t = people.birth[who] + (age * SECOND_PER_YEAR).astype(np.int64)
    t = np.clip(t, start[who], end[who] - 1)
    events.add(who, t, _zipf(rng, vocab, "ICD10", len(who)))
    rx = (rng.random(len(who)) < RX_SHARE) & (t >= _seconds(PRESCRIPTIONS_FROM))
    events.add(who[rx], t[rx], _zipf(rng, vocab, "ATC", int(rx.sum())))
    panel = (rng.random(len(who)) < LAB_SHARE) & (t >= _seconds(LABS_FROM))
    pw, pt = who[panel], t[panel]
    for code, base, per_m, sd in STANDARD_LABS:
        value = base + per_m * people.metabolic[pw] + rng.normal(0.0, sd, len(pw))
        if code == "NPU//NPU18016":
            age_at = (pt - people.birth[pw]) / SECOND_PER_YEAR
            value = value + CREATININE_PER_DECADE * (age_at - 60) / 10
        events.add(pw, pt, vocab.id(code), value + _lab_drift(people, code, pw, pt))
    extra = 1 + rng.poisson(EXTRA_LABS - 1, len(pw))
    ew, et = np.repeat(pw, extra), np.repeat(pt, extra)
    lab = _zipf(rng, vocab, "NPU", len(ew))
    z = (
        rng.standard_normal(len(ew))
        + vocab.lab_metabolic[lab] / np.maximum(vocab.lab_log_sd[lab], 1e-9) * (people.metabolic[ew])
    )
    events.add(ew, et, lab, vocab.lab_mean[lab] * np.exp(vocab.lab_log_sd[lab] * z))

    # Chronic conditions: repeated diagnoses, prescriptions and labs from onset to the record's end.
    dx_rate, rx_rate, lab_rate = _chronic_rates()
    chronic_scale = np.exp(0.5 * people.frailty - 0.125)
    kinds = (
        (dx_rate[None, :] * chronic_scale[:, None], _chronic_years(people, start, end), 0),
        (rx_rate[None, :], _chronic_years(people, start, end, PRESCRIPTIONS_FROM), 6),
        (lab_rate[None, :], _chronic_years(people, start, end, LABS_FROM), 7),
    )
    for j, condition in enumerate(CHRONIC):
        if people.comorbidity:  # diagnosed at onset, or at the record's start if it began before
            first = np.maximum(people.chronic_onset[:, j], start)
            who = everyone[first < end]
            events.add(who, first[who], vocab.id(condition[0]))
        for rate, (first, years), column in kinds:
            event_code = condition[column]
            if event_code is None:
                continue
            count = rng.poisson(k * np.broadcast_to(rate, years.shape)[:, j] * years[:, j])
            who = np.repeat(everyone, count)
            t = _uniform_times(rng, who, first[who, j], end[who])
            value = None
            if event_code.startswith("NPU//"):
                value = _standard_lab_value(rng, event_code, people, who, t)
            events.add(who, t, vocab.id(event_code), value)


def outcome_disease(cfg, disease: Disease) -> Disease:
    """The disease as the cohort draws it: with comorbidity, its weights on the conditions diagnosed
    by the prediction time (comorbidity.OUTCOME_LOG_ODDS) added, so the oracle knows them too."""
    extra = comorbidity.outcome_weights(disease.code) if cfg.registry_history and cfg.comorbidity else {}
    return replace(disease, weights=disease.weights | extra) if extra else disease


def _lab_drift(people: People, code: str, who: np.ndarray, t: np.ndarray):
    """How much a lab has moved since the onset of the conditions it follows (comorbidity.LAB_DRIFT)."""
    shift = 0.0
    for condition, lab, jump, per_year, years in comorbidity.LAB_DRIFT if people.comorbidity else ():
        if lab == code:
            since = (t - people.chronic_onset[who, CHRONIC_CODES.index(condition)]) / SECOND_PER_YEAR
            shift = shift + np.where(since >= 0, jump + per_year * np.minimum(since, years), 0.0)
    return shift


def _draw_liver_and_death(rng, vocab: Vocabulary, k: float, people: People, start, end, dead, events) -> None:
    """K76 diagnoses from onset to the record's end (as a chronic condition's), and the deaths."""
    first, years = mortality.liver_years(people.liver_onset, start, end)
    scale = np.exp(0.5 * people.frailty - 0.125)
    count = rng.poisson(k * mortality.LIVER_CONTACTS * scale * years)
    who = np.repeat(np.arange(len(people.birth)), count)
    events.add(who, _uniform_times(rng, who, first[who], end[who]), vocab.id(mortality.LIVER))
    events.add(np.flatnonzero(dead), people.death[dead], vocab.id(mortality.DEATH))


def _standard_lab_value(rng, code: str, people: People, who, t) -> np.ndarray:
    _, base, per_m, sd = next(row for row in STANDARD_LABS if row[0] == code)
    value = base + per_m * people.metabolic[who] + rng.normal(0.0, sd, len(who))
    if code == "NPU//NPU18016":
        value = value + CREATININE_PER_DECADE * ((t - people.birth[who]) / SECOND_PER_YEAR - 60) / 10
    return value + _lab_drift(people, code, who, t)


def draw_shard(cfg, panel, start: int, ids: np.ndarray) -> dict:
    """The shard's people [start, start + len(ids)) from the blocks they fall in: the pieces
    generate.py joins (events as an arrow table, truth, outcomes, labels' inputs)."""
    stop = start + len(ids)
    pieces = []
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        b0 = block * BLOCK
        n = min(BLOCK, cfg.n_subjects - b0)
        drawn = draw_block(cfg, panel, block, n)
        lo, hi = max(start, b0) - b0, min(stop, b0 + n) - b0
        pieces.append((drawn, lo, hi, b0))
    return _join(cfg, pieces, start, ids)


def _join(cfg, pieces, start, ids) -> dict:
    vocab = cohort_vocabulary(cfg)
    tables, truth, outcomes, times, hba1c, first = [], [], {}, [], [], []
    hba1c_id = vocab.id(ehr.HBA1C)
    horizon = cfg.horizon_days * 86400
    for drawn, lo, hi, b0 in pieces:
        person, time, code, value = drawn["events"]
        keep = (person >= lo) & (person < hi)
        person, time, code, value = person[keep], time[keep], code[keep], value[keep]
        people: People = drawn["people"]
        prediction = people.prediction[lo:hi]
        local = person - lo
        sid = ids[b0 + lo - start + local]
        null_time = time == drawn["static_time"]
        tables.append(
            pa.table(
                {
                    "subject_id": pa.array(sid, pa.int64()),
                    "time": pa.array(time * 1_000_000, pa.timestamp("us"), mask=null_time),
                    "code": pc.take(pa.array(vocab.codes, pa.string()), pa.array(code)),
                    "numeric_value": pa.array(value.astype(np.float32), pa.float32(), mask=np.isnan(value)),
                    "text_value": pa.nulls(len(sid), pa.large_string()),
                },
                schema=c.EVENTS_SCHEMA,
            )
        )
        truth.append({key: v[lo:hi] for key, v in drawn["truth"].items()})
        for name, cols in drawn["outcomes"].items():
            outcomes.setdefault(name, []).append(tuple(col[lo:hi] for col in cols))
        times.append(prediction)
        # the regression label: mean HbA1c measured in (prediction_time, + horizon]
        t0 = prediction[local]
        inside = (code == hba1c_id) & (time > t0) & (time <= t0 + horizon)
        total = np.bincount(local[inside], weights=value[inside], minlength=hi - lo)
        count = np.bincount(local[inside], minlength=hi - lo)
        hba1c.append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
        first.append(_first_diagnosis(cfg, drawn, lo, hi))
    return {
        "events": pa.concat_tables(tables),
        "truth": {key: np.concatenate([t[key] for t in truth]) for key in truth[0]},
        "outcomes": {
            name: tuple(np.concatenate(col) for col in zip(*parts, strict=True))
            for name, parts in outcomes.items()
        },
        "prediction_time": (np.concatenate(times) * 1_000_000).astype("datetime64[us]"),
        "hba1c": np.concatenate(hba1c),
        "first": np.concatenate(first),
    }


def _first_diagnosis(cfg, drawn, lo, hi) -> np.ndarray:
    """Which disease came first within the horizon ("none" if neither), as subject.py labels it."""
    names = list(cfg.diseases)
    days = np.stack([drawn["onset_days"][name][lo:hi] for name in names], 1)
    within = days <= cfg.horizon_days
    days = np.where(within, days, np.inf)
    label = np.array(names, dtype=object)[np.argmin(days, 1)]
    return np.where(within.any(1), label, "none").astype(object)
