"""Small-cell control of an evaluation summary (evaluation.json) and of the figures drawn from it.

Every count, and every figure computed from a group of persons, must rest on at least
``min_cell`` persons; the rules, and why each is enough, are in docs/output-control.md. In short:
- subgroups: adjacent age bands are merged until each holds ``min_cell`` persons (merged bands keep
  counts, not metrics: those need the subjects); other small cells are suppressed, and then the
  next smallest too, as long as the total minus the shown cells would give the hidden ones away;
- a group's event count (and its metrics) is hidden when events or non-events are fewer;
- figures are checked on the counts they were drawn from (``summary["figures"]``); calibration
  bins are merged and Kaplan-Meier curves coarsened (each step at least ``min_cell`` events, step
  times rounded, the curve cut where fewer remain at risk), both redrawn from the controlled counts.
Nothing here sees a subject: it works on aggregates only.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

KM_TIME_UNIT_DAYS = 30  # Kaplan-Meier steps and evaluation times are shown to the month


@dataclass
class Controlled:
    """The controlled summary, what was changed (one line each) and, if it cannot leave at all, why."""

    summary: dict
    changes: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _exact(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def cell_fails(n, events, min_cell: int) -> str | None:
    """Why a cell of ``n`` persons with ``events`` cannot be shown as it is; None when it can."""
    if not _exact(n):
        return f"its size is not in the summary ({n})"
    if n < min_cell:
        return f"fewer than {min_cell} persons"
    if events is not None and (events < min_cell or n - events < min_cell):
        return f"fewer than {min_cell} persons with or without the event"
    return None


# ---- subgroups ------------------------------------------------------------------------------------

_BAND = re.compile(r"^(?:<(\d+)|(\d+)-(\d+)|(\d+)\+)$")


def band_bounds(label: str) -> tuple[float, float] | None:
    """(lowest, highest) age of an age band label as the evaluation writes them: "<18", "18-39",
    "75+"; None for a label that is no band ("unknown")."""
    m = _BAND.match(label)
    if not m:
        return None
    if m.group(1):
        return (float("-inf"), int(m.group(1)) - 1)
    if m.group(2):
        return (int(m.group(2)), int(m.group(3)))
    return (int(m.group(4)), float("inf"))


def band_label(low: float, high: float) -> str:
    if low == float("-inf"):
        return f"<{int(high) + 1}"
    if high == float("inf"):
        return f"{int(low)}+"
    return f"{int(low)}-{int(high)}"


def merge_bands(entries: dict, min_cell: int, with_events: bool = True) -> tuple[dict, list[str]]:
    """Adjacent age bands merged, the smallest failing band into its smaller neighbour, until every
    band holds ``min_cell`` persons (with and without the event) or one band is left. Bands whose
    exact size the evaluation already hid ("<k") cannot be merged (their count is unknown); they
    and the labels that are no band are left to suppression."""
    bands = sorted(
        ((band_bounds(k), k, v) for k, v in entries.items() if band_bounds(k) and _exact(v["n"])),
        key=lambda b: b[0][0],
    )
    cells = [
        {
            "bounds": b,
            "labels": [k],
            "n": v["n"],
            "events": v.get("events") if with_events else None,
            "entry": v,
        }
        for b, k, v in bands
    ]
    changes = []

    def adjacent(a, b) -> bool:
        return a["bounds"][1] + 1 == b["bounds"][0]

    while len(cells) > 1:
        failing = [i for i, c in enumerate(cells) if cell_fails(c["n"], c["events"], min_cell)]
        if not failing:
            break
        i = min(failing, key=lambda k: cells[k]["n"])
        neighbours = [
            j
            for j in (i - 1, i + 1)
            if 0 <= j < len(cells) and adjacent(*sorted((cells[i], cells[j]), key=lambda c: c["bounds"][0]))
        ]
        if not neighbours:
            break
        j = min(neighbours, key=lambda k: cells[k]["n"])
        a, b = sorted((i, j))
        first, second = cells[a], cells[b]
        events = (
            None
            if first["events"] is None or second["events"] is None
            else first["events"] + second["events"]
        )
        cells[a : b + 1] = [
            {
                "bounds": (first["bounds"][0], second["bounds"][1]),
                "labels": first["labels"] + second["labels"],
                "n": first["n"] + second["n"],
                "events": events,
                "entry": None,
            }
        ]
    out = {k: v for k, v in entries.items() if not (band_bounds(k) and _exact(v["n"]))}
    for cell in cells:
        if cell["entry"] is not None:
            out[cell["labels"][0]] = cell["entry"]
            continue
        label = band_label(*cell["bounds"])
        out[label] = {
            "n": cell["n"],
            "events": cell["events"],
            "merged_from": cell["labels"],
            "note": "merged bands: counts only (metrics need the subjects; "
            "re-run medweave-eval with wider evaluation.age_bands)",
        }
        changes.append(f"age bands {', '.join(cell['labels'])} merged into {label}")
    order = lambda k: (band_bounds(k) or (float("inf"), 0))[0]  # noqa: E731
    return {k: out[k] for k in sorted(out, key=order)}, changes


def suppress(entries: dict, total_n: int, total_events, min_cell: int, group: str) -> tuple[dict, list[str]]:
    """Small cells hidden (a cell's events and metrics only, when just those are small), then
    secondary suppression: while the total minus the shown cells would give away fewer than
    ``min_cell`` hidden persons, events or non-events, the smallest shown cell is hidden as well."""
    entries = copy.deepcopy(entries)
    changes = []
    hidden: set[str] = set()  # n, events and metrics hidden
    no_events: set[str] = set()  # n shown; events and metrics hidden
    secondary: set[str] = set()
    for label, entry in entries.items():
        why = cell_fails(entry["n"], None if total_events is None else entry.get("events"), min_cell)
        if why and (not _exact(entry["n"]) or entry["n"] < min_cell):
            hidden.add(label)
            changes.append(f"{group} '{label}': suppressed ({why})")
        elif why:
            no_events.add(label)
            changes.append(f"{group} '{label}': events and metrics suppressed ({why})")

    def n_of(labels) -> int:
        return sum(entries[k]["n"] for k in labels if _exact(entries[k]["n"]))

    while True:
        shown = [k for k in entries if k not in hidden | no_events]
        hidden_n = total_n - n_of(set(entries) - hidden)  # what the total gives away
        if 0 < hidden_n < min_cell:
            pool, target = [k for k in entries if k not in hidden], hidden
        elif total_events is not None:
            hidden_events = total_events - sum(entries[k]["events"] for k in shown)
            hidden_non_events = hidden_n + n_of(no_events) - hidden_events
            if not (0 < hidden_events < min_cell or 0 < hidden_non_events < min_cell):
                break
            pool, target = shown, no_events
        else:
            break
        if not pool:
            break
        smallest = min(pool, key=lambda k: entries[k]["n"])
        target.add(smallest)
        secondary.add(smallest)
        what = "suppressed" if target is hidden else "events and metrics suppressed"
        changes.append(f"{group} '{smallest}': {what} (secondary: the total would reveal a small cell)")
    for label in hidden:
        n = entries[label]["n"]
        if not _exact(n):  # hidden by the evaluation already ("<20"): kept as it said
            entries[label] = {"n": n, "events": None, "note": f"fewer than {n[1:]} persons: not reported"}
        elif n < min_cell:
            entries[label] = {
                "n": f"<{min_cell}",
                "events": None,
                "note": f"fewer than {min_cell} persons: not reported",
            }
        else:
            entries[label] = {"n": "suppressed", "events": None, "note": "suppressed (secondary)"}
    for label in no_events - hidden:
        entry = entries[label]
        entry.pop("metrics", None)
        entry["events"] = "suppressed"
        entry["note"] = (
            "events and metrics suppressed (secondary)"
            if label in secondary
            else f"fewer than {min_cell} persons with or without the event: events and metrics not reported"
        )
    return entries, changes


def control_summary(summary: dict, min_cell: int) -> Controlled:
    """The summary as it may leave: subgroups merged or suppressed, attribution only over enough
    subjects, evaluation times rounded; refused outright when the whole split is too small."""
    out = copy.deepcopy(summary)
    result = Controlled(out)
    # multilabel counts positives over all labels (more than n): its events are no cell of persons
    events = None if summary.get("task_kind") == "multilabel" else summary.get("events")
    why = cell_fails(summary.get("n"), events, min_cell)
    if why:
        result.refused.append(f"the evaluated split itself has {why}")
        return result
    for group, entries in summary.get("groups", {}).items():
        changes = []
        if group == "age_band":
            entries, changes = merge_bands(entries, min_cell, events is not None)
        entries, more = suppress(entries, summary["n"], events, min_cell, group)
        out["groups"][group] = entries
        result.changes += changes + more
    attribution = summary.get("attribution")
    if attribution and attribution.get("subjects", 0) < min_cell:
        del out["attribution"]
        result.changes.append(f"modality attribution dropped (over fewer than {min_cell} subjects)")
    if "evaluation_times_days" in summary:  # percentiles of event times: near an individual's time
        out["evaluation_times_days"] = sorted(
            {round(t / KM_TIME_UNIT_DAYS) * KM_TIME_UNIT_DAYS for t in summary["evaluation_times_days"]}
        )
        result.changes.append(f"evaluation times rounded to {KM_TIME_UNIT_DAYS} days")
    out["min_group_size"] = max(int(summary.get("min_group_size", 0)), min_cell)
    return result


# ---- figures --------------------------------------------------------------------------------------


def merge_calibration_bins(bins: list[dict], min_cell: int) -> list[dict]:
    """Adjacent bins of risk pooled (the smallest into its smaller neighbour) until each holds
    ``min_cell`` persons; mean prediction and observed rate pooled exactly, weighted by n."""
    bins = [dict(b) for b in bins]
    while len(bins) > 1 and min(b["n"] for b in bins) < min_cell:
        i = min(range(len(bins)), key=lambda k: bins[k]["n"])
        j = i - 1 if i == len(bins) - 1 or (i > 0 and bins[i - 1]["n"] <= bins[i + 1]["n"]) else i + 1
        a, b = sorted((i, j))
        n = bins[a]["n"] + bins[b]["n"]
        pooled = {
            key: (bins[a][key] * bins[a]["n"] + bins[b][key] * bins[b]["n"]) / n
            for key in ("predicted", "observed")
        }
        bins[a : b + 1] = [{"n": n, **pooled}]
    return bins


def coarsen_kaplan_meier(curve: dict, min_cell: int) -> dict | None:
    """A Kaplan-Meier curve whose every step pools at least ``min_cell`` events, at a time rounded
    up to ``KM_TIME_UNIT_DAYS``, ending before fewer than ``min_cell`` are at risk; S(t) at each
    step is the exact estimate at the last pooled event. The curve ends at its last step: held flat
    beyond it, it would claim no events where up to min_cell - 1 were. None when no step is left."""
    steps, pool = [], 0
    for t, at_risk, events, s in zip(
        curve["time"], curve["at_risk"], curve["events"], curve["survival"], strict=True
    ):
        if at_risk < min_cell:
            break
        pool += events
        if pool >= min_cell:
            rounded = -(-t // KM_TIME_UNIT_DAYS) * KM_TIME_UNIT_DAYS
            if steps and steps[-1][0] == rounded:
                steps[-1] = (rounded, steps[-1][1] + pool, s)
            else:
                steps.append((rounded, pool, s))
            pool = 0
    if not steps:
        return None
    return {
        "label": curve["label"],
        "n": curve["n"],
        "time": [float(t) for t, _, _ in steps],
        "events": [int(e) for _, e, _ in steps],
        "survival": [round(float(s), 4) for _, _, s in steps],
    }


def control_figure(file: str, record: dict | None, min_cell: int, source: Path, dest: Path):
    """(controlled record or None, changes, refusal reason or None). Writes the figure to
    ``dest`` as it may leave: copied when its counts pass, redrawn when they had to be pooled."""
    import shutil

    from medweave.evaluation import report

    if record is None:
        return None, [], "no record of the counts it was drawn from (re-run medweave-eval to make one)"
    kind, out = record.get("kind"), copy.deepcopy(record)
    if kind in ("roc", "precision_recall"):
        small = cell_fails(record["positives"] + record["negatives"], record["positives"], min_cell)
        if small:
            return None, [], f"a {kind} curve over {small}"
    elif kind == "roc_per_class":
        small = [
            c
            for c, r in record["classes"].items()
            if cell_fails(r["positives"] + r["negatives"], r["positives"], min_cell)
        ]
        if small:
            return (
                None,
                [],
                f"classes {', '.join(small)} have fewer than {min_cell} persons in or out of the class",
            )
    elif kind in ("hexbin", "attribution"):
        if record["subjects"] < min_cell or record.get("min_count", min_cell) < min_cell:
            return None, [], f"cells of fewer than {min_cell} subjects"
    elif kind == "calibration":
        bins = merge_calibration_bins(record["bins"], min_cell)
        if sum(b["n"] for b in bins) < min_cell or min(b["n"] for b in bins) < min_cell:
            return None, [], f"fewer than {min_cell} persons"
        if len(bins) != len(record["bins"]):
            out["bins"] = bins
            report.calibration_figure(bins, dest)
            return (
                out,
                [f"{file}: {len(record['bins'])} bins of risk pooled into {len(bins)} (each >= {min_cell})"],
                None,
            )
    elif kind == "kaplan_meier":
        curves = [coarsen_kaplan_meier(c, min_cell) for c in record["curves"] if c["n"] >= min_cell]
        curves = [c for c in curves if c is not None]
        if not curves:
            return None, [], f"no Kaplan-Meier step pools {min_cell} events"
        out["curves"] = curves
        note = f"steps pool >= {min_cell} events, times rounded up to {KM_TIME_UNIT_DAYS} days"
        report.kaplan_meier_figure(curves, dest, note=note)
        dropped = len(record["curves"]) - len(curves)
        change = f"{file}: redrawn with {note}; cut where fewer than {min_cell} are at risk"
        return out, [change + (f"; {dropped} curve(s) dropped" if dropped else "")], None
    else:
        return None, [], f"a figure of unknown kind '{kind}': its cells cannot be checked"
    shutil.copyfile(source, dest)
    return out, [], None
