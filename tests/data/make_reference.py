"""Write the reference run that tests/test_reference.py compares every later version of the tool with.

    python tests/data/make_reference.py DATA_DIR            # writes reference_network.npz and reference.json

It trains a small network once (784-30-10 sigmoid, 3 epochs; committed, so that the comparison does not
depend on this machine's training arithmetic), then lays it out and tests its structure with the
public command, `python -m layout.run ... --network reference_network.npz` (the same command
tests/test_reference.py runs), and keeps the final layout, the faithfulness figures and every
structure test. The committed files were made by the tool as it stood before the code moved into
packages by stage (commit 97afa58): the move must not change what a user gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NETWORK = HERE / "reference_network.npz"
REFERENCE = HERE / "reference.json"
TRAIN = ("model.hidden=[30]", "train.epochs=3", "train.snapshot_every=100", "train.seed=3")
LAYOUT = ("layout.sim.steps=300", "structure.permutations=199", "structure.layout_nulls=19",
          "structure.stability_seeds=3", "structure.ablation_groups=19")


def run(args: list[str], data_dir: str, out: Path, cache: Path | None = None) -> None:
    """The public command, with its own cache folder when `cache` is given."""
    command = [sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export", "none",
               "--data-dir", data_dir, "--out", str(out), *args]
    env = {**os.environ, **({"NEURON_LAYOUT_CACHE": str(cache)} if cache else {})}
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, env=env)


def settings(*sets: str) -> list[str]:
    """The command-line form of config overrides: --set a=1 --set b=2."""
    return [part for s in sets for part in ("--set", s)]


def reference_figures(out: Path) -> dict:
    """What the comparison checks: final positions, faithfulness, every structure test and the verdicts."""
    with np.load(out / "trajectory.npz", allow_pickle=False) as z:
        final = z["positions"][-1]
        steps = int(z["step"][-1])
    metrics = json.loads((out / "metrics.json").read_text())["layout"]
    structure = json.loads((out / "structure.json").read_text())
    tests = [{k: t[k] for k in ("statistic", "space", "labels", "null", "observed", "p")}
             for layer in structure["layers"] for t in layer["tests"]]
    faithfulness = {k: metrics[k] for k in ("normalized_stress", "spearman", "knn_recall", "trustworthiness",
                                             "neighbourhood_hit", "silhouette")}
    return {"layout_args": list(LAYOUT), "final_positions": np.round(final.astype(np.float64), 6).tolist(), "steps": steps,
            "faithfulness": faithfulness, "tests": tests, "verdicts": structure["verdicts"]}


def main(data_dir: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained"
        run(settings(*TRAIN, "structure.enabled=false", "layout.sim.steps=1"), data_dir, trained)
        with np.load(trained / "network.npz", allow_pickle=False) as z:
            np.savez_compressed(NETWORK, **{k: z[k] for k in z.files})
        laid = Path(tmp) / "laid"
        run(["--network", str(NETWORK), *settings(*LAYOUT)], data_dir, laid)
        REFERENCE.write_text(json.dumps(reference_figures(laid), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
