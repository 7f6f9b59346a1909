"""The structure report: structure.json (every figure), report.md (tables and verdicts, in words) and
one PNG per hidden layer with each statistic drawn against its null distribution."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np

from layout.core.files import atomic_path, write_atomic, write_json, write_text
from layout.insight.ablation import Ablation
from layout.insight.stability import Retrained, Stability
from layout.insight.structure import LayerStructure, clean
from layout.insight.verdicts import p_text, verdict, verdicts

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

NULL_WORDS = {
    "shuffled_columns": "output weights shuffled within each output column, labels recomputed",
    "untrained": "the same architecture at its random initialisation",
    "shuffled_labels": "the network trained on shuffled labels",
    "relayout_shuffled_columns": "column-shuffled networks laid out again by the same simulation",
    "relayout_untrained": "untrained networks laid out again by the same simulation",
    "label_permutation": "the activation-dominant labels permuted across neurons",
    "neuron_permutation": "one distance matrix's neurons permuted (Mantel)",
}


def structure_json(layers, ablation: Ablation | None, stability: Stability | None, retrained: Retrained | None,
                   class_names, selectivity: dict | None = None) -> dict:
    out = {"layers": [], "ablation": None, "stability": None, "retrained": None,
           "verdicts": verdicts(layers, retrained), "nulls": NULL_WORDS}
    for layer in layers:
        out["layers"].append({
            "layer": layer.layer + 1, "n_neurons": layer.n_neurons,  # numbered from 1, as in every output
            "tested_neurons": layer.tested or layer.n_neurons,  # fewer: a sample drawn at random
            "name": layer.title,
            "tests": [t.summary() for t in layer.tests],
            "verdict": {space: verdict(layer.find("silhouette", space)) for space in ("layout", "output")},
            "confusion": None if layer.confusion is None else layer.confusion.tolist(),
            "selectivity": (selectivity or {}).get(layer.layer),
        })
    if ablation is not None:
        out["ablation"] = {"baseline_class_accuracy": dict(zip(class_names, map(float, ablation.baseline))),
                           "max_neuron_drop": float(ablation.drop.max()), "mean_neuron_drop": float(ablation.drop.mean()),
                           "groups": [{**g, "layer": g["layer"] + 1, "class": class_names[g["class"]]}
                                      for g in ablation.groups]}
    if stability is not None:
        out["stability"] = {"seeds": stability.seeds, "disparity": list(map(float, stability.disparity)),
                            "median_disparity": clean(float(np.median(stability.disparity))) if len(stability.disparity) else None,
                            "median_spread": float(np.median(stability.spread))}
    if retrained is not None:
        out["retrained"] = {"train_seeds": list(retrained.train_seeds),
                            "class_disparity": [clean(x) for x in retrained.class_disparity],
                            "class_p": [clean(x) for x in retrained.class_p],
                            "neuron_disparity": [clean(x) for x in retrained.neuron_disparity]}
    return out


def markdown(summary: dict, name: str, plots: list[str]) -> str:
    lines = [f"# Structure report: {name}", "",
             "Is the class structure real? Each statistic is compared with samples from null models; "
             "p is the fraction of null samples at least as structured (one-sided, (1 + count) / (1 + n)) "
             "and z how many null standard deviations the observed value lies beyond the null mean "
             "(positive: more structure).", "", "## Verdicts", ""]
    lines += [f"- {v}" for v in summary["verdicts"]]
    lines += ["", "## Nulls", ""] + [f"- `{k}`: {v}" for k, v in summary["nulls"].items()]
    for layer in summary["layers"]:
        sampled = (f"; tests on {layer['tested_neurons']} of them, drawn at random"
                   if layer["tested_neurons"] < layer["n_neurons"] else "")
        lines += ["", f"## {layer['name'].capitalize()} ({layer['n_neurons']} neurons{sampled})", ""]
        if not layer["tests"]:
            lines.append("Too few neurons to test.")
            continue
        lines += ["| statistic | space | labels | null | observed | null mean +/- sd | z | p | n |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in layer["tests"]:
            lines.append(f"| {t['statistic']} | {t['space']} | {t['labels'] or '-'} | {t['null']} | {num(t['observed'])} "
                         f"| {num(t['null_mean'])} +/- {num(t['null_sd'])} | {num(t['z'], 2)} | "
                         f"{p_text(t['p'], t['n_null']) if t['p'] is not None else 'n/a'} | {t['n_null']} |")
        if layer["confusion"] is not None:
            lines += ["", "Dominant class (rows) against activation-dominant class (columns):", "",
                      "```"] + [" ".join(f"{v:4d}" for v in row) for row in layer["confusion"]] + ["```"]
        if layer.get("selectivity"):
            lines += ["", *selectivity_table(layer["selectivity"], layer["tests"])]
    if summary["ablation"]:
        a = summary["ablation"]
        lines += ["", "## Ablation", "",
                  f"Silencing one neuron costs at most {a['max_neuron_drop']:.4f} test accuracy "
                  f"(mean {a['mean_neuron_drop']:.4f}). Silencing a whole dominance group, against random groups "
                  "of the same size from the same layer:", "",
                  "| layer | class | size | drop in that class's accuracy | random groups | p |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for g in a["groups"]:
            null = "n/a" if g["null_mean"] is None else f"{g['null_mean']:.4f} +/- {num(g['null_sd'])}"
            lines.append(f"| {g['layer']} | {markdown_text(g['class'])} | {g['size']} | {g['drop']:.4f} | {null} | "
                         f"{num(g['p'])} |")
    if summary["stability"]:
        s = summary["stability"]
        lines += ["", "## Stability", "",
                  f"{s['seeds']} layouts from random starts, aligned by Procrustes: median disparity "
                  f"{num(s['median_disparity'])} (0: the same layout up to rotation, reflection and scale; 1: "
                  f"unrelated), median per-neuron spread {s['median_spread']:.3f} layout radii."]
    if summary["retrained"]:
        r = summary["retrained"]
        lines += ["", "## Stability across retraining", "",
                  "The network trained again with other seeds and laid out the same way. Class arrangement: the "
                  "3D centroids of each (layer, dominant class) group, aligned by Procrustes to this layout's, "
                  "against relabelled classes. Matched neurons: each layer's neurons paired by output-vector "
                  "similarity, then aligned.", "",
                  "| train seed | class-arrangement disparity | p | matched-neuron disparity |", "| --- | --- | --- | --- |"]
        lines += [f"| {s} | {num(d)} | {num(p)} | {num(m)} |"
                  for s, d, p, m in zip(r["train_seeds"], r["class_disparity"], r["class_p"], r["neuron_disparity"])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## What each neuron looks at", "",
              "Every neuron's receptive field, grouped by the class it drives hardest, and beside the test images "
              "that activate it most and least:", ""]
    lines += [f"- layer {layer['layer']}: [atlas_layer{layer['layer']}.png](atlas_layer{layer['layer']}.png), "
              f"[atlas_top_layer{layer['layer']}.png](atlas_top_layer{layer['layer']}.png)"
              for layer in summary["layers"]]
    return "\n".join(lines) + "\n"


def selectivity_table(quartiles: dict, tests: list[dict]) -> list[str]:
    """Each selectivity index's quartiles over the layer's neurons beside the untrained networks', and
    the test of the difference (the layer mean against the untrained networks' means)."""
    def spread(q) -> str:
        return "n/a" if q is None else f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]"

    lines = ["Class selectivity (median [quartiles] over the neurons; the index of Morcos et al. 2018, and the "
             "effective number of classes):", "",
             "| index | this network | untrained networks | layer mean against theirs: p |", "| --- | --- | --- | --- |"]
    for name, q in quartiles.items():
        test = next((t for t in tests if t["statistic"] == name and t["null"] == "untrained"), None)
        p = "n/a" if test is None or test["p"] is None else p_text(test["p"], test["n_null"])
        lines.append(f"| {name} | {spread(q['observed'])} | {spread(q['untrained'])} | {p} |")
    return lines


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>&~])")


def markdown_text(text: str) -> str:
    """Text from the user's data (a class name) as Markdown shows it literally: every character that
    Markdown or HTML would read as markup escaped with a backslash (CommonMark)."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def num(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def plot_layer(path: Path, layer: LayerStructure) -> Path:
    """A grid of histograms: each test's null distribution with the observed value as a red line."""
    tests = [t for t in layer.tests if t.n]
    cols = 4
    rows = -(-len(tests) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tests):
        counts, edges = np.histogram(t.null_values, bins=30)
        ax.stairs(counts, edges, fill=True, color="0.6")  # one artist per histogram: hist draws 30 bars
        ax.axvline(t.observed, color="red")
        ax.set_title(f"{t.statistic} ({t.space}, {t.labels or '-'})\nnull: {t.null}; {p_text(t.p, t.n)}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(tests):]:
        ax.axis("off")
    fig.suptitle(f"Layer {layer.layer + 1}: observed (red) against null samples (grey)")
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.06, top=1 - 0.9 / (2.6 * rows), hspace=0.6, wspace=0.25)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def write_report(out: Path, name: str, layers, ablation, stability, retrained, class_names,
                 plots_png: dict[int, bytes] | None = None, selectivity: dict | None = None) -> tuple[Path, ...]:
    """structure.json, report.md and a plot per tested layer; `plots_png` (layer -> PNG bytes, from an
    earlier run of the same tests) is written instead of plotting again."""
    def plot(layer: LayerStructure) -> Path:
        path = out / f"structure_layer{layer.file_number}.png"
        if plots_png and layer.layer in plots_png:
            return write_atomic(path, lambda f: f.write(plots_png[layer.layer]))
        return plot_layer(path, layer)

    plots = [plot(l) for l in layers if l.tests]
    summary = structure_json(layers, ablation, stability, retrained, class_names, selectivity)
    return (write_json(out / "structure.json", summary),
            write_text(out / "report.md", markdown(summary, name, [p.name for p in plots])), *plots)
