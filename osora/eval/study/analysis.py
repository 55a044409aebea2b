"""From a study's key and answers to the paper's Figure 1: per model pair and aspect, the win /
tie / loss rates of the first model (the reference, against each rival), with bootstrap CIs over
prompts, and Fleiss' kappa of the raters per aspect.

Each rater's answer to an item is one rating; "left"/"right" go back to models through the key.
Pairs are oriented by the model order: the reference first, then the key's order.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np

from osora.eval.study.answers import AnswerStore
from osora.eval.study.layout import ASPECTS, KEY, read_study_json
from osora.eval.study.stats import bootstrap_rates, fleiss_kappa
from osora.fileio import atomic_write_json, atomic_write_text

OUTCOMES = ("win", "tie", "loss")  # of the pair's first model; also the kappa categories
LEVEL = 0.95


def analyze(key: dict, answers: dict[str, dict[str, dict]], reference: str | None = None,
            n_boot: int = 2000, seed: int = 0) -> dict:
    """The study's numbers as a JSON-able dict. `answers`: rater → item → answer (the
    AnswerStore's view); `reference`: the model compared against each rival (default: the key's
    first model); `n_boot` bootstrap resamples with `seed`."""
    order = _model_order(key, reference)
    outcomes = _outcome_counts(key, answers, order)  # item → (aspects, 3)
    pairs = []
    for first, second in itertools.combinations(order, 2):
        items = [i for i, e in key["items"].items() if {e["left"], e["right"]} == {first, second}]
        table = np.array([outcomes[i] for i in items if i in outcomes]).reshape(-1, len(ASPECTS),
                                                                            len(OUTCOMES))
        pairs.append({"model": first, "rival": second, "n_items": len(items),
                      "aspects": {a: _rates(table[:, k], n_boot, seed)
                                  for k, a in enumerate(ASPECTS)}})
    return {
        "reference": order[0], "models": order, "aspects": list(ASPECTS),
        "outcomes": list(OUTCOMES), "confidence": LEVEL, "n_boot": n_boot, "seed": seed,
        "raters": sorted(r for r, given in answers.items() if given),
        "n_answers": sum(len(given) for given in answers.values()),
        "pairs": pairs,
        "kappa": {a: _kappa([outcomes[i][k] for i in outcomes]) for k, a in enumerate(ASPECTS)},
    }


def analyze_study(study_dir: Path, reference: str | None = None, n_boot: int = 2000,
                  seed: int = 0) -> dict:
    """Analyse a study folder and write analysis.json, analysis.md and figure1.png into it."""
    study_dir = Path(study_dir)
    result = analyze(read_study_json(study_dir, KEY), AnswerStore(study_dir).all_answers(),
                     reference, n_boot, seed)
    atomic_write_json(study_dir / "analysis.json", result)
    atomic_write_text(study_dir / "analysis.md", markdown(result))
    figure(result, study_dir / "figure1.png")
    return result


def _model_order(key: dict, reference: str | None) -> list[str]:
    models = [m["name"] for m in key["models"]]
    reference = models[0] if reference is None else reference
    if reference not in models:
        raise ValueError(f"reference model {reference!r} is not in the study; its models: "
                         f"{', '.join(models)}")
    return [reference] + [m for m in models if m != reference]


def _outcome_counts(key: dict, answers: dict[str, dict[str, dict]], order: list[str]
                    ) -> dict[str, np.ndarray]:
    """item → (aspects, outcomes) counts over raters, outcomes of the pair's first model."""
    rank = {m: k for k, m in enumerate(order)}
    counts: dict[str, np.ndarray] = {}
    for rater, given in answers.items():
        for item, answer in given.items():
            if item not in key["items"]:
                raise ValueError(f"rater {rater!r} answered item {item!r}, which the study's key "
                                 "does not have (was the study rebuilt after rating began?)")
            entry = key["items"][item]
            first_is_left = rank[entry["left"]] < rank[entry["right"]]
            table = counts.setdefault(item, np.zeros((len(ASPECTS), len(OUTCOMES)), np.int64))
            for k, aspect in enumerate(ASPECTS):
                choice = answer[aspect]
                outcome = "tie" if choice == "same" else (
                    "win" if (choice == "left") == first_is_left else "loss")
                table[k, OUTCOMES.index(outcome)] += 1
    return counts


def _rates(table: np.ndarray, n_boot: int, seed: int) -> dict:
    """Rates, CIs and counts of one pair and aspect from its (items, outcomes) table."""
    if not len(table):
        return {"n_items_rated": 0, "n_ratings": 0, "counts": dict.fromkeys(OUTCOMES, 0),
                "rates": dict.fromkeys(OUTCOMES), "ci": dict.fromkeys(OUTCOMES)}
    rates, low, high = bootstrap_rates(table, n_boot, seed, LEVEL)
    return {
        "n_items_rated": len(table), "n_ratings": int(table.sum()),
        "counts": {o: int(c) for o, c in zip(OUTCOMES, table.sum(axis=0))},
        "rates": {o: float(r) for o, r in zip(OUTCOMES, rates)},
        "ci": {o: [float(lo), float(hi)] for o, lo, hi in zip(OUTCOMES, low, high)},
    }


def flat_metrics(result: dict) -> dict[str, float]:
    """The analysis as MLflow metrics: `study/<model>_vs_<rival>/<aspect>/<outcome>` rates and
    their CI bounds (`…/<outcome>_low`, `_high`), `study/kappa/<aspect>`, `study/answers`;
    undefined numbers (no ratings, kappa without two raters) are left out."""
    def safe(name: str) -> str:  # MLflow metric names: alphanumerics and _ - . space : /
        return re.sub(r"[^\w\-. :]", "_", name)

    metrics: dict[str, float] = {"study/answers": result["n_answers"]}
    for pair in result["pairs"]:
        prefix = f"study/{safe(pair['model'])}_vs_{safe(pair['rival'])}"
        for aspect, stats in pair["aspects"].items():
            for outcome, rate in stats["rates"].items():
                if rate is not None:
                    low, high = stats["ci"][outcome]
                    metrics.update({f"{prefix}/{aspect}/{outcome}": rate,
                                    f"{prefix}/{aspect}/{outcome}_low": low,
                                    f"{prefix}/{aspect}/{outcome}_high": high})
    for aspect, agreement in result["kappa"].items():
        if agreement["kappa"] is not None:
            metrics[f"study/kappa/{aspect}"] = agreement["kappa"]
    return metrics


def _kappa(tables: list[np.ndarray]) -> dict:
    """Fleiss' kappa over the items with at least two raters (of any pair)."""
    rated = np.array([t for t in tables if t.sum() >= 2]).reshape(-1, len(OUTCOMES))
    kappa = fleiss_kappa(rated) if len(rated) else math.nan
    return {"kappa": None if math.isnan(kappa) else kappa, "n_items": len(rated),
            "n_ratings": int(rated.sum())}


def _cell(row: dict, outcome: str) -> str:
    """'52.0% [41.0%, 63.0%]', or '–' with no ratings."""
    if row["rates"][outcome] is None:
        return "–"
    low, high = row["ci"][outcome]
    return f"{100 * row['rates'][outcome]:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]"


def markdown(result: dict) -> str:
    """analysis.md: the rates table and the kappas."""
    lines = [
        f"# Human preference: {result['reference']} against each rival",
        "",
        f"{len(result['raters'])} raters, {result['n_answers']} answers. Rates of the first "
        f"model over all ratings; [{100 * result['confidence']:.0f}% percentile bootstrap CI "
        f"over prompts, {result['n_boot']} resamples, seed {result['seed']}].",
        "",
        "| model vs rival | aspect | win | tie | loss | ratings (prompts) |",
        "|---|---|---|---|---|---|",
    ]
    for pair in result["pairs"]:
        for aspect, row in pair["aspects"].items():
            lines.append(f"| {pair['model']} vs {pair['rival']} | {aspect.replace('_', ' ')} | "
                         + " | ".join(_cell(row, o) for o in OUTCOMES)
                         + f" | {row['n_ratings']} ({row['n_items_rated']}) |")
    lines += ["", "Fleiss' kappa per aspect (categories: first model wins / tie / second wins; "
              "items with ≥ 2 raters):", "", "| aspect | kappa | items |", "|---|---|---|"]
    for aspect, k in result["kappa"].items():
        value = "undefined" if k["kappa"] is None else f"{k['kappa']:.3f}"
        lines.append(f"| {aspect.replace('_', ' ')} | {value} | {k['n_items']} |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> Path:
    """The paper's Figure 1: per aspect, one horizontal stacked bar (win / tie / loss %) of the
    reference against each rival."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    reference = result["reference"]
    pairs = [p for p in result["pairs"] if p["model"] == reference]
    colours = {"win": "#2e7d32", "tie": "#9e9e9e", "loss": "#c62828"}
    fig = Figure(figsize=(8, 1.2 + 0.9 * len(ASPECTS) * max(len(pairs), 1)))
    axes = fig.subplots(len(ASPECTS), 1, sharex=True, squeeze=False)
    for ax, aspect in zip(axes[:, 0], ASPECTS):
        for y, pair in enumerate(pairs):
            left = 0.0
            for outcome in OUTCOMES:
                share = 100 * (pair["aspects"][aspect]["rates"][outcome] or 0.0)
                ax.barh(y, share, left=left, color=colours[outcome],
                        label=outcome if y == 0 else None)
                if share >= 6:
                    ax.text(left + share / 2, y, f"{share:.0f}%", ha="center", va="center",
                            color="white", fontsize=9)
                left += share
        ax.set_yticks(range(len(pairs)), [f"vs {p['rival']}" for p in pairs])
        ax.invert_yaxis()
        ax.set_title(aspect.replace("_", " ").capitalize(), loc="left", fontsize=10)
    axes[-1, 0].set_xlim(0, 100)
    axes[-1, 0].set_xlabel(f"% of ratings ({reference} win / tie / loss)")
    axes[0, 0].legend(ncol=3, loc="lower right", bbox_to_anchor=(1, 1.15), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    return path
