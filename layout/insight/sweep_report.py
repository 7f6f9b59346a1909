"""The sweep's tables: sweep.csv (a row per point and hidden layer) and sweep.md (the same as tables,
and a summary over train.seed). The contact sheet is render/contact_sheet.py."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from layout.core.files import write_text
from layout.core.sweep_file import value_label

SEED_KEY = "train.seed"
FIGURES = ("test_accuracy", "weight_sparsity", "dead_fraction", "weight_sparsity_in", "dedication")
TESTED = ("silhouette_output", "hit_output", "ratio_output", "silhouette_3d", "hit_3d", "activation_hit_output",
          "agreement", "mantel_receptive_field", "mantel_coactivation", "selectivity")
SUMMARY = ("test_accuracy", "dead_fraction", "weight_sparsity_in", "dedication", "silhouette_output",
           "silhouette_3d", "activation_hit_output", "agreement", "mantel_receptive_field", "mantel_coactivation",
           "selectivity")
MEANINGS = {
    "test_accuracy": "accuracy on the test set",
    "weight_sparsity": "fraction of all weights below 1% of their matrix's largest magnitude",
    "dead_fraction": "fraction of the layer's neurons whose activation is constant (sd < 0.001) over the test set",
    "weight_sparsity_in": "weight_sparsity of the weights into this layer",
    "dedication": "mean share of a neuron's largest output weight in its summed output-weight magnitudes "
                  "(1: drives one class only; 1/C: all alike)",
    "silhouette_output": "silhouette of the neurons grouped by dominant class, in output-vector space",
    "hit_output": "neighbourhood hit (k nearest) by dominant class, in output-vector space",
    "ratio_output": "mean within-class / between-class distance by dominant class (lower: more clustered)",
    "silhouette_3d": "silhouette by dominant class in the 3D layout",
    "hit_3d": "neighbourhood hit by dominant class in the 3D layout",
    "activation_hit_output": "neighbourhood hit by activation-dominant class, in output-vector space",
    "agreement": "fraction of neurons whose weight-dominant and activation-dominant classes agree",
    "mantel_receptive_field": "Mantel r between output-vector and receptive-field distances",
    "mantel_coactivation": "Mantel r between output-vector distances and 1 - activation correlation",
    "selectivity": "the layer's mean class-selectivity index, against untrained networks' (structure.selectivity_nulls)",
}


def value_text(v) -> str:
    if isinstance(v, dict):
        return value_label(v)
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.4g}"
    return str(v).replace(" ", "") if isinstance(v, (list, tuple)) else str(v)


def write_tables(out: Path, name: str, keys: tuple[str, ...], rows: list[dict],
                 failed: list[dict] | None = None, planned: int | None = None) -> tuple[Path, ...]:
    """sweep.csv and sweep.md from the finished points' layer rows; `failed` (dicts with point, the
    grid values and error) become rows with only their values and the error. With fewer points than
    `planned`, sweep.md says that the sweep was interrupted."""
    failed = failed or []
    columns = list(rows[0]) if rows else ["point", *keys]
    columns += ["error"] if failed else []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[value_text(row.get(c, "")) for c in columns]
                      for row in sorted(rows + failed, key=lambda r: r["point"])])
    return (write_text(out / "sweep.csv", text.getvalue()),
            write_text(out / "sweep.md", markdown(name, keys, rows, failed, planned)))


def with_p(row: dict, column: str) -> str:
    """'0.123 (p 0.04)' for a tested figure, the bare number otherwise."""
    v = row[column]
    if f"{column}_p" not in row:
        return value_text(v)
    p = row[f"{column}_p"]
    return "n/a" if not np.isfinite(v) else f"{v:.3f} (p {p:.2g})" if np.isfinite(p) else f"{v:.3f}"


def table(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(line) + " |" for line in lines])


def markdown(name: str, keys: tuple[str, ...], rows: list[dict], failed: list[dict], planned: int | None = None) -> str:
    per_point = table(["point", *keys, "layer", *FIGURES, *TESTED],
                      [[str(r["point"]), *(value_text(r[k]) for k in keys), str(r["layer"]),
                        *(value_text(r[c]) for c in FIGURES), *(with_p(r, c) for c in TESTED)] for r in rows])
    ran = len({r["point"] for r in rows + failed})
    interrupted = [f"**Interrupted: {ran} of {planned} points ran.**", ""] if planned and ran < planned else []
    parts = [f"# Sweep {name}", "", *interrupted,
             f"{len({r['point'] for r in rows})} points, a row per point and hidden layer. "
             "Tested figures show the observed value and the p-value of the weakest null (for the dominant-class "
             "statistics the largest p over shuffled columns, untrained and, in 3D, their re-laid-out "
             "networks; see each point's report.md).", "", per_point, ""]
    if SEED_KEY in keys and len({r[SEED_KEY] for r in rows}) > 1:
        parts += [f"## Over {SEED_KEY}", "", "Mean +/- sd over the seeds; 'real' counts the seeds whose dominance "
                  "clustering beats every null at p <= 0.01.", "", seed_summary(keys, rows), ""]
    if failed:
        parts += ["## Failed points", "", *(f"- point {f['point']} ({', '.join(f'{k} = {value_text(f[k])}' for k in keys)}): "
                                           f"{f['error']}" for f in failed), ""]
    parts += ["## Columns", "", *(f"- `{k}`: {v}" for k, v in MEANINGS.items()), ""]
    return "\n".join(parts)


def seed_summary(keys: tuple[str, ...], rows: list[dict]) -> str:
    """One line per combination of the other grid keys and layer: mean +/- sd over the seeds."""
    others = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(value_text(r[k]) for k in others) + (r["layer"],), []).append(r)
    lines = []
    for group_key, members in groups.items():
        cells = [*group_key[:-1], str(group_key[-1]), str(len(members))]
        for c in SUMMARY:
            v = np.array([m.get(c, np.nan) for m in members], float)
            v = v[np.isfinite(v)]
            cells.append(f"{v.mean():.3f} +/- {v.std(ddof=1) if len(v) > 1 else 0:.3f}" if len(v) else "n/a")
        for space in ("output", "3d"):
            cells.append(f"{sum(m[f'verdict_{space}'] == 'real structure' for m in members)}/{len(members)}")
        lines.append(cells)
    return table([*others, "layer", "seeds", *SUMMARY, "real (output)", "real (3D)"], lines)
