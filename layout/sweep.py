"""`python -m layout.sweep SWEEP.yaml`: run the whole pipeline over a grid of configs and compare them.

A sweep file names a base run config, overrides applied to every point, and a grid:

    base: euclid.yaml              # relative to the sweep file
    set:                           # optional, applied to every point
      structure.stability_seeds: 0
    grid:                          # every combination of these values is one point
      train.l1: [0, 0.0001, 0.0003]
      train.seed: [0, 1, 2]

Each point runs like `python -m layout.run` (training and layouts come from the cache when they match)
into <out>/points/<id>/ with its snapshot. The sweep then writes sweep.csv (a row per point and hidden
layer), sweep.md (the same, and a summary over train.seed) and contact_sheet.png (every point's final
layout). Every point's config is checked before the first one runs.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from layout.cli import with_data_dir
from layout.config import (
    RunConfig,
    load_config,
    read_yaml_mapping,
    unknown_key_message,
    valid_paths,
)
from layout.errors import ConfigError, UserError

DEAD_SD = 1e-3  # a hidden neuron is dead when its activation varies less than this over the test set
SPARSE_FRACTION = 0.01  # a weight counts as zero when |w| < this x the largest |w| of its matrix
SHEET_COLUMNS = 4


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Path
    settings: tuple[str, ...]  # "key=value" overrides for every point
    grid: tuple[tuple[str, tuple], ...]  # (dotted key, values)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.grid)

    def points(self) -> list[dict]:
        """Every combination of the grid's values, the last key varying fastest."""
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*(v for _, v in self.grid))]


def read_sweep(path: str | Path) -> Sweep:
    """A sweep file, checked: a base config that exists, known keys, a non-empty list per grid key."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    unknown = set(raw) - {"name", "base", "set", "grid"}
    if unknown:
        raise ConfigError(f"sweep file '{path}': unknown key {sorted(unknown)[0]!r}: a sweep has name, base, set "
                          "and grid")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"sweep file '{path}' needs 'base: <run config>', e.g. base: euclid.yaml")
    base = path.parent / raw["base"]
    if not base.is_file():
        raise ConfigError(f"sweep file '{path}': base config '{base}' not found: check the path")
    settings = mapping(raw.get("set") or {}, path, "set")
    grid = mapping(raw.get("grid"), path, "grid")
    if not grid:
        raise ConfigError(f"sweep file '{path}' needs a grid: 'grid:' with at least one key and its list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep file '{path}': grid.{key} must be a non-empty list of values, e.g. [0, 0.001]")
    return Sweep(name=str(raw.get("name") or path.stem), base=base,
                 settings=tuple(f"{k}={json.dumps(v)}" for k, v in settings.items()),
                 grid=tuple((k, tuple(v)) for k, v in grid.items()))


def mapping(raw, path: Path, section: str) -> dict:
    """A section of dotted config keys: a mapping whose keys exist in a run config."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file '{path}': {section} must map config keys to values, e.g. train.l1: [0, 0.001]")
    known = set(valid_paths())
    for key in raw:
        if str(key) not in known:
            raise ConfigError(f"sweep file '{path}': {section}: {unknown_key_message(str(key))}")
    return {str(k): v for k, v in raw.items()}


def point_label(point: dict) -> str:
    """'l1=0.0003 hidden=[100] seed=1': the last part of each key and its value."""
    return " ".join(f"{k.rpartition('.')[2]}={json.dumps(v, separators=(',', ':'))}" for k, v in point.items())


def point_configs(sweep: Sweep, extra: tuple[str, ...], data_dir: str | None) -> list[RunConfig]:
    """Every point's RunConfig (named <sweep>_<id>), validated before anything runs; a bad value names
    its point."""
    configs = []
    for i, point in enumerate(sweep.points()):
        values = tuple(f"{k}={json.dumps(v)}" for k, v in point.items())
        try:
            cfg = load_config(sweep.base, sweep.settings + values + extra + (f"name={sweep.name}_{i:02d}",))
        except ConfigError as e:
            raise ConfigError(f"sweep point {i} ({point_label(point)}): {e}") from None
        configs.append(with_data_dir(cfg, data_dir))
    return configs


# ---------------------------------------------------------------------------------------------
# Figures of one point


def dead_fraction(activations: np.ndarray) -> float:
    """Fraction of neurons whose activation [n_images, n] is (nearly) constant over the images: they
    carry nothing (a relu that never fires, a sigmoid stuck at 0 or 1)."""
    return float((activations.std(0) < DEAD_SD).mean())


def weight_sparsity(weights: np.ndarray) -> float:
    """Fraction of a weight matrix's entries below SPARSE_FRACTION of its largest magnitude."""
    magnitude = np.abs(weights)
    return float((magnitude < SPARSE_FRACTION * magnitude.max()).mean()) if magnitude.size else float("nan")


def network_sparsity(weights) -> float:
    """weight_sparsity over all of a network's weight matrices (each against its own largest weight)."""
    return float(sum(weight_sparsity(w) * w.size for w in weights) / sum(w.size for w in weights))


def dedication(vectors: np.ndarray) -> float:
    """Mean share of each neuron's largest output weight in the sum of its output weights' magnitudes:
    1 when every neuron drives one class only, 1 / C when it drives all classes alike."""
    magnitude = np.abs(vectors)
    total = magnitude.sum(1)
    keep = total > 0
    return float((magnitude.max(1)[keep] / total[keep]).mean()) if keep.any() else float("nan")


TESTS = {  # column -> (statistic, space, labels) of the test; the p is the weakest null's
    "silhouette_output": ("silhouette", "output", "dominant"),
    "hit_output": ("neighbourhood_hit", "output", "dominant"),
    "ratio_output": ("distance_ratio", "output", "dominant"),
    "silhouette_3d": ("silhouette", "layout", "dominant"),
    "hit_3d": ("neighbourhood_hit", "layout", "dominant"),
    "activation_hit_output": ("neighbourhood_hit", "output", "activation_dominant"),
    "agreement": ("agreement", "output", ""),
    "mantel_receptive_field": ("mantel_receptive_field", "output", ""),
    "mantel_coactivation": ("mantel_coactivation", "output", ""),
}


def layer_rows(layer_structures, activations: list[np.ndarray], network, vectors: list[np.ndarray]) -> list[dict]:
    """A row per hidden layer: its size, dead fraction, sparsity of the weights into it, dedication, and
    each test's observed value with the weakest null's p-value."""
    from layout.structure import decisive, verdict

    rows = []
    for s in layer_structures:
        l = s.layer
        row = {"layer": l + 1, "neurons": s.n_neurons, "dead_fraction": dead_fraction(activations[l]),
               "weight_sparsity_in": weight_sparsity(network.weights[l]), "dedication": dedication(vectors[l])}
        for column, (statistic, space, labels) in TESTS.items():
            tests = [t for t in s.tests if (t.statistic, t.space, t.labels) == (statistic, space, labels)]
            weakest = max(decisive(tests) or tests, key=lambda t: t.p if np.isfinite(t.p) else 2, default=None)
            row[column] = weakest.observed if weakest else float("nan")
            row[f"{column}_p"] = weakest.p if weakest else float("nan")
        row["verdict_output"] = verdict(s.find("silhouette", "output"))
        row["verdict_3d"] = verdict(s.find("silhouette", "layout"))
        rows.append(row)
    return rows


def run_point(cfg: RunConfig, out: Path, retrain: bool) -> tuple[list[dict], Path | None]:
    """The pipeline for one point (no window): (its layer rows, its snapshot)."""
    from layout.features import hidden_activations
    from layout.files import write_json
    from layout.run import run_figures
    from layout.stages import layout_stage, render_stage, scene_for, training_stage
    from layout.structure_stage import structure_stage

    trained = training_stage(cfg, out, retrain=retrain)
    laid = layout_stage(cfg, trained, out, relayout=retrain)
    structure = structure_stage(cfg, trained, laid, out, retest=retrain)
    write_json(out / "metrics.json", run_figures(trained, laid, structure))
    snapshot = render_stage(scene_for(cfg, trained, laid, structure), cfg, out, ("png",))
    net, f = trained.network, laid.features
    activations = hidden_activations(net, trained.dataset.test.images)
    vectors = [f.output_vectors[f.layer == l] for l in range(f.n_layers)]
    common = {"test_accuracy": net.test_accuracy, "weight_sparsity": network_sparsity(net.weights)}
    rows = [{**common, **row} for row in layer_rows(structure.layers, activations, net, vectors)]
    return rows, snapshot[0] if snapshot else None


def sheet_title(i: int, point: dict, rows: list[dict], error: str | None = None) -> str:
    """A contact-sheet caption: the point, its accuracy and each layer's 3D silhouette with its p (or
    why it failed)."""
    if error:
        return f"{i:02d}: {point_label(point)}\nfailed: {error}"
    layers = ", ".join(f"L{r['layer']} {r['silhouette_3d']:.2f} (p {r['silhouette_3d_p']:.2g})" for r in rows)
    return f"{i:02d}: {point_label(point)}\naccuracy {rows[0]['test_accuracy']:.3f}; 3D silhouette {layers}"


# ---------------------------------------------------------------------------------------------
# The whole sweep (layout/run.py's sweep command prints as it goes)


@dataclass(frozen=True)
class PointResult:
    index: int
    point: dict
    rows: list  # its layer rows, each with the point's grid values (empty if it failed)
    snapshot: Path | None
    error: str | None = None  # why the point failed (a diverging training, say); the sweep goes on


def run_points(sweep: Sweep, configs: list[RunConfig], out: Path, retrain: bool) -> Iterator[PointResult]:
    """Run every point into <out>/points/<id>/, yielding each result as it finishes."""
    if not all(cfg.structure.enabled for cfg in configs):
        raise ConfigError("a sweep compares structure statistics: leave structure.enabled true")
    for i, (point, cfg) in enumerate(zip(sweep.points(), configs)):
        try:
            rows, snapshot = run_point(cfg, out / "points" / f"{i:02d}", retrain)
        except UserError as e:  # one point's failure (a diverging training, say) does not end the sweep
            yield PointResult(i, point, [], None, str(e))
            continue
        yield PointResult(i, point, [{"point": i, **point, **row} for row in rows], snapshot)


def point_summary(result: PointResult, total: int) -> str:
    """One line per finished point: its values, accuracy and verdicts."""
    rows = result.rows
    if result.error:
        return f"point {result.index + 1}/{total} ({point_label(result.point)}): failed: {result.error}"
    return (f"point {result.index + 1}/{total} ({point_label(result.point)}): test accuracy "
            f"{rows[0]['test_accuracy']:.4f}; " + "; ".join(
                f"layer {r['layer']}: 3D {r['verdict_3d']}, output space {r['verdict_output']}" for r in rows))


def write_sweep(out: Path, sweep: Sweep, results: list[PointResult]) -> tuple[Path, ...]:
    """sweep.csv, sweep.md and contact_sheet.png."""
    from layout.sweep_report import contact_sheet, write_tables

    rows = [row for r in results for row in r.rows]
    failed = [{"point": r.index, **r.point, "error": r.error} for r in results if r.error]
    sheet = contact_sheet(out / "contact_sheet.png", [r.snapshot for r in results],
                          [sheet_title(r.index, r.point, r.rows, r.error) for r in results], SHEET_COLUMNS)
    return write_tables(out, sweep.name, sweep.keys, rows, failed) + (sheet,)


def main(argv: list[str] | None = None) -> int:
    from layout.run import sweep_main

    return sweep_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
