"""The structure stage: after the layout, test the class structure against nulls, ablate, check the
layout's stability (or reuse the results of an earlier run of the same layout), and write report.md,
structure.json, the null plots and neurons.csv again with the per-neuron results. Nothing here prints."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layout.core.config import RunConfig
from layout.core.files import cache_dir
from layout.core.plain import fingerprint
from layout.core.progress import progress_bar
from layout.insight.ablation import Ablation
from layout.insight.cache import load_tested, save_tested
from layout.insight.report import write_report
from layout.insight.stability import Stability
from layout.insight.structure import LayerStructure
from layout.insight.suite import STRUCTURE_NEURONS, Subject, Tested, count_parts, run_structure_tests
from layout.insight.verdicts import verdicts
from layout.pipeline.layout_stage import LayoutResult
from layout.pipeline.outputs import write_neurons_csv
from layout.pipeline.train_stage import TrainResult


@dataclass(frozen=True)
class StructureResult:
    tested: Tested  # the layers' tests, ablation, stability, retraining
    verdicts: tuple[str, ...]
    seconds: float
    written: tuple[Path, ...]
    reused: bool = False  # the results came from the cache
    notes: tuple[str, ...] = ()  # for the user: a cache entry that was refused

    @property
    def layers(self) -> tuple[LayerStructure, ...]:
        return self.tested.layers

    @property
    def ablation(self) -> Ablation:
        return self.tested.ablation

    @property
    def stability(self) -> Stability | None:
        return self.tested.stability

    @property
    def figures(self) -> dict:
        """metrics.json's "structure" section."""
        return {"verdicts": list(self.verdicts), "seconds": self.seconds, "reused": self.reused}


def structure_key(cfg: RunConfig, network_key: str, data_key: str, layout_key: str, positions: np.ndarray) -> str:
    """Everything the results depend on: the network, the data (its test set gives the activations; its
    training set, with the model and train sections, the retrained and shuffled-label networks), the
    layout and its final positions [N, 3], the structure settings, and how many neurons of a wide layer are
    tested (version 5: the sample of a layer wider than STRUCTURE_NEURONS; 6: the ablation's nested
    random groups)."""
    return fingerprint({"version": 6, "network": network_key, "data": data_key, "model": cfg.model, "train": cfg.train,
                        "layout": layout_key, "structure": cfg.structure, "tested": STRUCTURE_NEURONS,
                        "positions": hashlib.sha256(np.ascontiguousarray(positions).tobytes()).hexdigest()})[:20]


def structure_stage(cfg: RunConfig, trained: TrainResult, laid: LayoutResult, out: Path, *,
                    retest: bool = False) -> StructureResult:
    """Test the network's class structure against nulls, ablate, check the layout's stability; write
    structure.json, report.md, the null plots, and neurons.csv again with the per-neuron results.

    The results are reused from <cache>/structure/ when the network, its layout and the structure
    settings are unchanged (unless `retest`)."""
    start = time.perf_counter()
    f = laid.features
    positions = laid.trajectory.final[:f.n_neurons]
    key = structure_key(cfg, trained.figures["network_key"], trained.dataset.key, laid.figures["layout_key"],
                        positions)
    cached = cache_dir() / "structure" / f"{key}.npz"
    tested, note = (None, None) if retest else load_tested(cached, key)
    reused = tested is not None
    if tested is None:
        subject = Subject(trained.network, trained.dataset, f, laid.particles, positions)
        parts = count_parts(cfg, f.layer_sizes, laid.particles.n_particles)
        with progress_bar(parts, "structure tests", "part") as bar:
            tested = run_structure_tests(cfg, subject, on_part=bar.advance_to)
    written = write_report(out, cfg.name, tested.layers, tested.ablation, tested.stability, tested.retrained,
                           f.class_names, tested.plots_png, tested.selectivity)
    if not reused or not tested.plots_png:  # (an entry without its plots gets them)
        plots = {l.layer: (out / f"structure_layer{l.file_number}.png").read_bytes() for l in tested.layers if l.tests}
        save_tested(cached, dataclasses.replace(tested, plots_png=plots), key)
    a = tested.ablation
    extra = {"ablation_drop": a.drop, "ablation_own_class_drop": a.class_drop[np.arange(f.n_neurons), f.dominant]}
    if tested.stability is not None:
        extra["spread"] = tested.stability.spread
    write_neurons_csv(out / "neurons.csv", f, positions, laid.distortion, trained.network.classes, extra)
    return StructureResult(tested, tuple(verdicts(tested.layers, tested.retrained)), time.perf_counter() - start,
                           written, reused, (note,) if note else ())
