"""A comparison's results: per method, each probe's mean with a Student-t 95% interval over
seeds and the per-seed values, the paper's value beside ours on paper rows, a verdict that says
when the figures cannot tell methods apart, as `results.json`, `results.md` and a PNG (bars
with intervals; probe accuracy against pretraining step from the online evaluation)."""

from __future__ import annotations

import datetime
import io
import json
import os

from commandline import filesystem
from keras_metamae.evaluation import intervals
from preprocessing.atomic_files import write_text_atomically

# The figures of each run, in table order: (key, heading).
FIGURES = (("paper_probe", "paper's probe"), ("converged_probe", "converged probe"),
           ("knn", "kNN"))
NAMES = {"random": "random encoder", "emix": "e-Mix", "shed": "ShED", "capri": "Capri",
         "dabs-mae": "MAE (DABS 2.0)", "mae": "MAE + decoder", "metamae": "MetaMAE"}


def _figures(evaluation: dict) -> dict:
    converged = (evaluation.get("converged") or {}).get("value")
    paper = evaluation.get("value") if evaluation.get("probe") in ("paper", "both") else None
    return {"paper_probe": paper, "converged_probe": converged,
            "knn": evaluation.get("knn_accuracy")}


def summarize(comparison, runs: dict, paper_row=None) -> dict:
    """The results record: per method, per figure, `intervals.summarize` over the seeds that
    finished, the diverged seeds, the paper's value (paper rows)."""
    metric = None
    out = {}
    for method, records in runs.items():
        finished = [r for r in records if "diverged" not in r]
        per_figure = {}
        for key, _ in FIGURES:
            values = {r["seed"]: _figures(r["evaluation"])[key] for r in finished}
            values = {seed: v for seed, v in values.items() if v is not None}
            per_figure[key] = dict(intervals.summarize(list(values.values())),
                                   per_seed={str(s): v for s, v in values.items()})
        if finished:
            metric = metric or finished[0]["evaluation"]["metric"]
        out[method] = {
            "name": NAMES.get(method, method),
            "figures": per_figure,
            "steps": sorted({r["step"] for r in finished}),
            "diverged": [{"seed": r["seed"], **r["diverged"]} for r in records
                         if "diverged" in r],
            "online": {str(r["seed"]): r["online"] for r in finished if r.get("online")},
            "paper": None if paper_row is None else paper_row.paper.get(method),
        }
    return {
        "dataset": comparison.dataset,
        "probe_dataset": comparison.probe_dataset,
        "metric": metric,
        "steps": comparison.steps,
        "seeds": list(comparison.seeds),
        "epochs": comparison.epochs,
        "interval": intervals.INTERVAL_NAME,
        "paper_row": None if paper_row is None else {"table": paper_row.table,
                                                     "label": paper_row.label},
        "date": datetime.date.today().isoformat(),
        "methods": out,
        "verdict": verdicts(out),
    }


def verdicts(methods: dict) -> dict:
    """Per figure: the method with the best mean, and the others whose seeds do not differ
    from its seeds (Welch's t-test at 5%): a tie is said as a tie."""
    out = {}
    for key, _ in FIGURES:
        scored = {m: r["figures"][key] for m, r in methods.items() if r["figures"][key]["n"]}
        if not scored:
            continue
        best = max(scored, key=lambda m: scored[m]["mean"])
        ties = [m for m in scored if m != best and
                intervals.differ(scored[best]["values"], scored[m]["values"]) is not True]
        out[key] = {"best": best, "not_different_from_best": ties}
    return out


def _scaled(value, metric: str | None) -> str:
    """A figure in the paper's units: percent, Spearman's rho as is."""
    if value is None:
        return "-"
    return f"{value:.3f}" if metric == "spearman" else f"{100 * value:.1f}"


def _cell(figure: dict, metric: str | None) -> str:
    if not figure["n"]:
        return "-"
    text = _scaled(figure["mean"], metric)
    if figure["half_width"] is not None:
        text += " ± " + (f"{figure['half_width']:.3f}" if metric == "spearman"
                         else f"{100 * figure['half_width']:.1f}")
    seeds = ", ".join(_scaled(v, metric) for v in figure["per_seed"].values())
    return f"{text} ({seeds})"


def markdown(results: dict) -> str:
    metric = results["metric"]
    units = "Spearman's rho" if metric == "spearman" else f"{metric} in %"
    where = results["dataset"] + ("" if results["probe_dataset"] == results["dataset"]
                                  else f" -> {results['probe_dataset']}")
    lines = [f"# Pretraining methods on {where}", "",
             f"{results['steps']:,} pretraining steps per run, seeds "
             f"{', '.join(str(s) for s in results['seeds'])}; probes on the test split "
             f"({units}): mean ± half-width of the {results['interval']}, per-seed values in "
             f"brackets. Paper's probe: {results['epochs']} epochs of Adam (DABS protocol); "
             "converged probe: L-BFGS logistic regression regularised on validation; kNN: "
             "cosine, k = 20.", ""]
    header = "| method | " + " | ".join(h for _, h in FIGURES)
    rule = "|---|" + "---:|" * len(FIGURES)
    if results["paper_row"]:
        header += " | paper"
        rule += "---:|"
    lines += [header + " |", rule]
    for method, record in results["methods"].items():
        cells = [_cell(record["figures"][key], metric) for key, _ in FIGURES]
        if record["diverged"]:
            cells[0] += "; " + ", ".join(
                f"seed {d['seed']} diverged at step {d['diverged_at']}" for d in record["diverged"])
        row = f"| {record['name']} | " + " | ".join(cells)
        if results["paper_row"]:
            paper = record["paper"]
            row += " | " + ("-" if paper is None else f"{paper:g}")
        lines.append(row + " |")
    lines += ["", "Which method? (Welch's t-test between seeds, 5%)"]
    for key, heading in FIGURES:
        verdict = results["verdict"].get(key)
        if not verdict:
            continue
        best = results["methods"][verdict["best"]]["name"]
        ties = [results["methods"][m]["name"] for m in verdict["not_different_from_best"]]
        tie_text = (f"; not distinguishable from it with these seeds: {', '.join(ties)}"
                    if ties else "; every other method is below it")
        lines.append(f"- {heading}: best mean {best}{tie_text}.")
    if results["paper_row"]:
        lines += ["", f"Paper: Table {results['paper_row']['table']}, {results['paper_row']['label']}"
                  " (as printed; '-' where the paper has no value)."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Left: each figure's mean per method with its interval and the per-seed points. Right:
    the online evaluation's probe (kNN where there is one) against pretraining step, the mean
    over seeds per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results["methods"])
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(FIGURES)
    for i, (key, heading) in enumerate(FIGURES):
        x = np.arange(len(methods)) + (i - (len(FIGURES) - 1) / 2) * width
        figures = [results["methods"][m]["figures"][key] for m in methods]
        means = [f["mean"] if f["n"] else np.nan for f in figures]
        errors = [f["half_width"] or 0.0 for f in figures]
        bars.bar(x, means, width, yerr=errors, capsize=3, label=heading, alpha=0.8)
        for xi, f in zip(x, figures):
            bars.plot([xi] * f["n"], f["values"], "k.", markersize=3)
    bars.set_xticks(np.arange(len(methods)))
    bars.set_xticklabels([results["methods"][m]["name"] for m in methods], rotation=30,
                         ha="right")
    bars.set_ylabel(results["metric"] or "")
    bars.set_title(f"{results['probe_dataset']}: mean and {results['interval']}", fontsize=9)
    bars.legend(fontsize=8)

    plotted = False
    for method in methods:
        per_seed = results["methods"][method]["online"]
        series = {}
        for history in per_seed.values():
            for point in history:
                value = point.get("knn_accuracy",
                                  next((v for k, v in point.items() if k.startswith("probe_")),
                                       None))
                if value is not None:
                    series.setdefault(point["step"], []).append(value)
        if series:
            steps = sorted(series)
            curves.plot(steps, [np.mean(series[s]) for s in steps], marker="o", markersize=3,
                        label=results["methods"][method]["name"])
            plotted = True
    curves.set_xlabel("pretraining step")
    curves.set_ylabel("online kNN accuracy (mean over seeds)")
    if plotted:
        curves.legend(fontsize=8)
    else:
        curves.text(0.5, 0.5, "no online evaluation in these runs", ha="center",
                    transform=curves.transAxes)
    fig.tight_layout()
    if filesystem.is_url(path):  # one object, written whole
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        filesystem.write_object(path, buffer.getvalue())
        return
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def closing_text(paths: dict) -> str:
    """What a command prints at the end: the table and where the files are."""
    return (filesystem.read_text(paths["markdown"])
            + f"\nWritten: {paths['markdown']}, {paths['json']}, {paths['plot']}")


def write(results: dict, workdir: str) -> dict:
    """Writes results.json, results.md and comparison.png into `workdir`; returns their paths."""
    filesystem.makedirs(workdir)
    paths = {"json": os.path.join(workdir, "results.json"),
             "markdown": os.path.join(workdir, "results.md"),
             "plot": os.path.join(workdir, "comparison.png")}
    write_text_atomically(paths["json"], json.dumps(results, indent=2) + "\n")
    write_text_atomically(paths["markdown"], markdown(results))
    plot(results, paths["plot"])
    return paths
