"""Clinical notes whose findings, negations and uncertainty follow the symptom factor s.

Every symptom is mentioned whether present or not, in varied wording ("no signs of dyspnea",
"reports shortness of breath", "possible breathlessness"), so counting symptom words does not
solve the task: the model has to read the negation and hedging around them.
"""

from __future__ import annotations

import numpy as np

from medweave.sandbox.latent import Person, sigmoid

SYMPTOMS = {
    "dyspnea": ["dyspnea", "shortness of breath", "breathlessness"],
    "chest_pain": ["chest pain", "chest discomfort", "pressure in the chest"],
    "fatigue": ["fatigue", "tiredness", "exhaustion"],
    "edema": ["ankle edema", "leg swelling", "peripheral edema"],
    "palpitations": ["palpitations", "irregular heartbeat", "racing heart"],
    "dizziness": ["dizziness", "light-headedness", "vertigo"],
}
PRESENT = [
    "Patient reports {}.",
    "Complains of {}.",
    "{} noted on examination.",
    "Ongoing {} since last visit.",
    "Describes worsening {}.",
]
ABSENT = ["No signs of {}.", "Denies {}.", "{} not present.", "Negative for {}.", "No {} reported."]
UNCERTAIN = [
    "Possible {}.",
    "Cannot rule out {}.",
    "Questionable {}, to be followed up.",
    "{} may be present.",
]
FILLER = [
    "Blood pressure measured.",
    "Medication reviewed with the patient.",
    "Follow-up in three months.",
    "Weight stable.",
    "Vaccination status up to date.",
    "Referred for routine blood tests.",
    "Patient seen in outpatient clinic.",
]
NOTE_TYPES = ["NOTE//clinic", "NOTE//discharge"]


def _sentence(templates: list[str], phrase: str, rng: np.random.Generator) -> str:
    text = str(rng.choice(templates)).format(phrase)
    return text[0].upper() + text[1:]


def draw_note(symptoms: float, rng: np.random.Generator) -> str:
    sentences = [str(s) for s in rng.choice(FILLER, size=2, replace=False)]
    for name in rng.permutation(list(SYMPTOMS)):
        phrase = str(rng.choice(SYMPTOMS[name]))
        p = sigmoid(-0.6 + 2.2 * symptoms + rng.normal(0, 0.3))
        if rng.random() < 0.1:  # hedged mention: weak evidence either way
            sentences.append(_sentence(UNCERTAIN, phrase, rng))
        elif rng.random() < p:
            sentences.append(_sentence(PRESENT, phrase, rng))
        else:
            sentences.append(_sentence(ABSENT, phrase, rng))
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i] for i in order)


def draw_note_events(
    person: Person, visits: np.ndarray, onset: bool, rng: np.random.Generator
) -> list[tuple]:
    """Notes at the last 1 + Poisson(1) visits before prediction_time, and one 30 days after it
    (real records have those too; a pipeline must never let them reach a model)."""
    before = visits[visits < person.prediction_time]
    if len(before):
        times = before[-min(len(before), 1 + rng.poisson(1.0)) :]
    else:
        times = [person.prediction_time - np.timedelta64(3, "D")]
    events = [(t, str(rng.choice(NOTE_TYPES)), None, draw_note(person.symptoms, rng)) for t in times]
    later = person.prediction_time + np.timedelta64(30, "D")
    events.append((later, "NOTE//clinic", None, draw_note(person.symptoms + 2.0 * onset, rng)))
    return events
