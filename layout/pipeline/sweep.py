"""A sweep (`python -m layout.sweep SWEEP.yaml`): the whole pipeline over a grid of configs, compared.
The sweep file (layout/core/sweep_file.py) names a base run config, overrides and a grid. Each point
runs like `python -m layout.run` (training and layouts come from the cache when they match) into
<out>/points/<NN>/ with its snapshot (points numbered from 1, as everywhere). The sweep then writes
sweep.csv (a row per point and hidden layer), sweep.md (the same, and a summary over train.seed) and
contact_sheet.png (every point's final layout). Every point's config is checked before the first one
runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from layout.core.config import RunConfig
from layout.core.errors import ConfigError, UserError
from layout.core.files import write_json
from layout.core.sweep_file import Sweep, point_label
from layout.engine.features import hidden_activations
from layout.insight.sweep_figures import layer_rows, network_sparsity
from layout.insight.sweep_report import write_tables
from layout.pipeline.layout_stage import layout_stage
from layout.pipeline.outputs import run_figures
from layout.pipeline.render_stage import render_stage, scene_for
from layout.pipeline.structure_stage import structure_stage
from layout.pipeline.train_stage import data_stage, training_stage
from render.contact_sheet import contact_sheet

SHEET_COLUMNS = 4


def run_point(cfg: RunConfig, out: Path, retrain: bool) -> tuple[list[dict], Path | None]:
    """The pipeline for one point (no window): (its layer rows, its snapshot)."""
    trained = training_stage(cfg, data_stage(cfg), out, retrain=retrain)
    laid = layout_stage(cfg, trained, out, relayout=retrain)
    structure = structure_stage(cfg, trained, laid, out, retest=retrain)
    write_json(out / "metrics.json", run_figures(trained.figures, laid.figures, structure.figures))
    snapshot, _ = render_stage(scene_for(cfg, trained, laid, structure), cfg, out, ("png",))  # (no notes for a png)
    net, f = trained.network, laid.features
    hidden = f.hidden_layers or tuple(range(f.n_layers))
    activations = hidden_activations(net, trained.dataset.test.images, hidden)
    vectors = [f.output_vectors[f.layer == l] for l in range(f.n_layers)]
    common = {"test_accuracy": net.test_accuracy, "weight_sparsity": network_sparsity(net.weights)}
    names = tuple(f.layer_name(l).removeprefix("layer ") for l in range(f.n_layers))
    rows = [{**common, **row} for row in layer_rows(structure.layers, activations, net, vectors, hidden, names)]
    return rows, snapshot[0] if snapshot else None


def sheet_title(i: int, point: dict, rows: list[dict], error: str | None = None) -> str:
    """A contact-sheet caption: the point, its accuracy and each layer's 3D silhouette with its p (or
    why it failed)."""
    if error:
        return f"{i:02d}: {point_label(point)}\nfailed: {error}"
    layers = [f"L{r['layer']} {r['silhouette_3d']:.2f} (p {r['silhouette_3d_p']:.2g})" for r in rows]
    lines = [", ".join(layers[i:i + 2]) for i in range(0, len(layers), 2)]  # two layers a line: captions fit
    return f"{i:02d}: {point_label(point)}\naccuracy {rows[0]['test_accuracy']:.3f}; 3D silhouette " + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The whole sweep (the command, layout/run.py, prints as it goes)


@dataclass(frozen=True)
class PointResult:
    index: int  # from 1
    point: dict
    rows: list  # its layer rows, each with the point's grid values (empty if it failed)
    snapshot: Path | None
    error: str | None = None  # why the point failed (a diverging training, say); the sweep goes on


def run_points(sweep: Sweep, configs: list[RunConfig], out: Path, retrain: bool,
               debug: bool = False) -> Iterator[PointResult]:
    """Run every point into <out>/points/<NN>/, yielding each result as it finishes. A point that fails in
    any way (a diverging training, a full disk, a bug) is a failed point, and the sweep goes on;
    Ctrl-C ends the sweep. With `debug`, an error that is not the user's ends it with its traceback."""
    if not all(cfg.structure.enabled for cfg in configs):
        raise ConfigError("a sweep compares structure statistics: leave structure.enabled true")
    for i, (point, cfg) in enumerate(zip(sweep.points(), configs), start=1):
        try:
            rows, snapshot = run_point(cfg, out / "points" / f"{i:02d}", retrain)
        except Exception as e:
            if debug and not isinstance(e, UserError):
                raise
            yield PointResult(i, point, [], None, failure(e))
            continue
        yield PointResult(i, point, [{"point": i, **point, **row} for row in rows], snapshot)


def point_summary(result: PointResult, total: int) -> str:
    """One line per finished point: its values, accuracy and verdicts."""
    rows = result.rows
    if result.error:
        return f"point {result.index}/{total} ({point_label(result.point)}): failed: {result.error}"
    return (f"point {result.index}/{total} ({point_label(result.point)}): test accuracy "
            f"{rows[0]['test_accuracy']:.4f}; " + "; ".join(
                f"layer {r['layer']}: 3D {r['verdict_3d']}, output space {r['verdict_output']}" for r in rows))


def failure(e: Exception) -> str:
    """Why a point failed, in one line: a UserError says it; anything else is named with its type."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.filename:
        return f"cannot write {e.filename}: {e.strerror or e}"
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}{': ' + text if text else ''} (--debug shows its traceback)"


def write_sweep(out: Path, sweep: Sweep, results: list[PointResult], planned: int) -> tuple[Path, ...]:
    """sweep.csv, sweep.md and contact_sheet.png of the points that ran (of `planned`)."""
    rows = [row for r in results for row in r.rows]
    failed = [{"point": r.index, **r.point, "error": r.error} for r in results if r.error]
    sheet = contact_sheet(out / "contact_sheet.png", [r.snapshot for r in results],
                          [sheet_title(r.index, r.point, r.rows, r.error) for r in results], SHEET_COLUMNS)
    return write_tables(out, sweep.name, sweep.keys, rows, failed, planned) + (sheet,)

