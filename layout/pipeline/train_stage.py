"""The data and training stages: config -> dataset (`data_stage`) -> network (trained, reused from the
cache, or read from a network file) -> config.yaml and network.npz (`training_stage`)."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from layout.core.config import RunConfig, config_to_yaml
from layout.core.files import cache_dir, write_text
from layout.core.progress import progress_bar
from layout.pipeline.preflight import check_fits_data, check_memory, check_trainable
from models.data.datasets import Dataset, load_dataset
from models.network.mlp import layer_sizes
from models.network.network import Network
from models.network.store import check_fits, load_network, obtain_network, save_network
from models.network.train import N_INPUTS, enable_compilation_cache


@dataclass(frozen=True)
class TrainResult:
    dataset: Dataset
    network: Network
    figures: dict  # the training figures of metrics.json
    written: tuple[Path, ...]

    @property
    def reused(self) -> bool:
        return self.figures["reused"]


def data_stage(cfg: RunConfig) -> Dataset:
    """The data the config selects, checked against what the rest of the config asks of it; its notes
    (the bundled sample was used, say) are for the command to show before training starts."""
    dataset = load_dataset(cfg.data, progressbar=sys.stderr.isatty())
    check_fits_data(cfg, dataset)
    return dataset


def training_stage(cfg: RunConfig, dataset: Dataset, out: Path, *, retrain: bool = False,
                   network_file: str | None = None, lays_out: bool = True) -> TrainResult:
    """Check that the run fits the data and this machine (with the stages after training when the run
    `lays_out` the network), then train or reuse the network (or read the one given as
    `network_file`); write config.yaml (before training starts) and network.npz."""
    enable_compilation_cache(cache_dir() / "jax")
    given = load_network(network_file) if network_file else None
    n_train, n_test = len(dataset.train.labels), len(dataset.test.labels)
    if given is not None:
        check_fits(given, dataset, network_file)
        check_memory(cfg, given.sizes, n_train, n_test, given_snapshots=len(given.snapshots.step),
                     lays_out=lays_out)
    else:
        check_trainable(cfg, dataset)
        check_memory(cfg, layer_sizes(N_INPUTS, cfg.model.hidden, dataset.n_classes), n_train, n_test,
                     lays_out=lays_out)
    config_file = write_text(out / "config.yaml", config_to_yaml(cfg))
    if given is not None:
        network, key, reused = given, "given-" + file_digest(Path(network_file))[:14], True
    else:
        with progress_bar(cfg.train.epochs, "training", "epoch") as bar:
            network, key, reused = obtain_network(cfg, dataset, retrain=retrain, on_epoch=lambda s: bar.advance_to(
                s.epoch, loss=f"{s.train_loss:.3f}", test_acc=f"{s.test_accuracy:.4f}"))
    figures = {
        "dataset": dataset.name,
        "data_source": str(dataset.source),
        "sizes": list(network.sizes),
        "activation": network.activation,
        "classes": list(network.classes),
        "n_train": n_train,
        "n_test": n_test,
        "n_params": network.n_params,
        "epochs": network.epochs,
        "test_accuracy": network.test_accuracy,
        "train_accuracy": network.train_accuracy,
        "train_seconds": network.train_seconds,
        "network_key": key,
        "reused": reused,
        "network_file": str(network_file) if network_file else None,
    }
    written = (config_file, save_network(out / "network.npz", network, key))
    return TrainResult(dataset, network, figures, written)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_summary(result: TrainResult) -> str:
    net, fig = result.network, result.figures
    how = (f"read from {fig['network_file']}" if fig["network_file"] else
           "reused from cache" if result.reused else f"trained in {net.train_seconds:.1f} s")
    return (f"{net.dataset} {'-'.join(map(str, net.sizes))} {net.activation}, {net.epochs} epochs ({how})\n"
            f"test accuracy {net.test_accuracy:.4f} on {fig['n_test']} images, "
            f"train accuracy {net.train_accuracy:.4f}")
