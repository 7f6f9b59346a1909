"""The data and training stages: config -> dataset (`data_stage`) -> network (trained, reused from the
cache, or read from a network file) -> config.yaml and network.npz (`training_stage`)."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from layout.core.config import ModelConfig, RunConfig
from layout.core.config_file import config_to_yaml
from layout.core.errors import UserError
from layout.core.files import cache_dir, write_text
from layout.core.layers import hidden_kinds
from layout.core.memory import gigabytes
from layout.core.plain import fingerprint
from layout.core.progress import progress_bar
from layout.pipeline.preflight import (
    check_fits_data,
    check_laid_out,
    check_layers,
    check_memory,
    check_snapshots,
    check_trainable,
)
from models.data.datasets import Dataset, load_dataset
from models.formats.imported import read_network_file
from models.network.mlp import layer_sizes
from models.network.network import Inputs, Network, inputs_of
from models.network.store import Obtained, check_fits, obtain_network, save_network
from models.network.train import enable_compilation_cache


@dataclass(frozen=True)
class TrainResult:
    config: RunConfig  # the config as used, the one config.yaml records: with a network file, the file's model
    dataset: Dataset
    network: Network
    figures: dict  # the training figures of metrics.json
    written: tuple[Path, ...]
    notes: tuple[str, ...] = ()  # for the user: the network file's model replaced the config's, a cache entry refused

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
                   network_file: str | None = None, lays_out: bool = True,
                   expect_accuracy: float | None = None) -> TrainResult:
    """Check that the run fits the data and this machine (with the stages after training when the run
    `lays_out` the network), then train or reuse the network (or read the one given as
    `network_file`, whose test accuracy must be `expect_accuracy` to within ACCURACY_TOLERANCE when
    given); write config.yaml (before training starts) and network.npz. Without `network_file`, the
    config's model.file is read, if it names one."""
    network_file = network_file or cfg.model.file
    enable_compilation_cache(cache_dir() / "jax")
    inputs = inputs_of(cfg.data, dataset.input_shape)
    given, read_notes = read_network_file(network_file, cfg.model, dataset, inputs) if network_file else (None, ())
    n_train, n_test = len(dataset.train.labels), len(dataset.test.labels)
    if given is not None:
        check_fits(given, dataset, network_file, inputs)
        check_accuracy(given, dataset, network_file, expect_accuracy)
        check_snapshots(cfg, len(given.snapshots.step), network_file, lays_out)
        if lays_out:
            check_laid_out(cfg, given.hidden_kinds, f"the network in {network_file}")
        if given.layers is not None:  # a CNN's file
            check_layers(with_model_of(cfg, given, network_file)[0], dataset.n_classes, n_train, n_test,
                         input_shape=inputs.shape)
        else:
            check_memory(cfg, given.sizes, n_train, n_test, given_snapshots=len(given.snapshots.step),
                         lays_out=lays_out)
    elif cfg.model.layers is not None:
        check_trainable(cfg, dataset)
        if lays_out:
            check_laid_out(cfg, hidden_kinds(cfg.model.layers), "model.layers")
        check_layers(cfg, dataset.n_classes, n_train, n_test, input_shape=inputs.shape)
    else:
        check_trainable(cfg, dataset)
        if lays_out:
            check_laid_out(cfg, ("dense",) * len(cfg.model.hidden), "the MLP of model.hidden")
        check_memory(cfg, layer_sizes(inputs.n_pixels, cfg.model.hidden, dataset.n_classes), n_train, n_test,
                     lays_out=lays_out)
    if given is not None:
        digest = file_digest(Path(network_file))
        used, notes = with_model_of(cfg, given, network_file)
        config_file = write_text(out / "config.yaml", given_header(network_file, digest) + config_to_yaml(used))
        obtained = Obtained(given, given_key(digest, inputs), True, read_notes + notes)
    else:
        used = cfg
        config_file = write_text(out / "config.yaml", config_to_yaml(cfg))
        with progress_bar(cfg.train.epochs, "training", "epoch") as bar:
            obtained = obtain_network(cfg, dataset, retrain=retrain, on_epoch=lambda s: bar.advance_to(
                s.epoch, loss=f"{s.train_loss:.3f}", test_acc=f"{s.test_accuracy:.4f}"))
    network, key, reused = obtained.network, obtained.key, obtained.reused
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
        "data_key": dataset.key,
        "reused": reused,
        "network_file": str(network_file) if network_file else None,
    }
    saved = save_network(out / "network.npz", network, key)
    notes = obtained.notes + size_note(saved, network, network_file is None)
    return TrainResult(used, dataset, network, figures, (config_file, saved), notes)


ACCURACY_TOLERANCE = 0.001


def given_key(digest: str, inputs: Inputs) -> str:
    """A given network's key for the caches after training: its file, and how its images are scaled
    (which changes every figure computed from the network's activations)."""
    return "given-" + fingerprint({"file": digest, "inputs": inputs})[:14]


def check_accuracy(network: Network, dataset: Dataset, path: str, expected: float | None) -> None:
    """--expect-accuracy: the network computes here what its framework computed, to ACCURACY_TOLERANCE."""
    if expected is None or abs(network.test_accuracy - expected) <= ACCURACY_TOLERANCE:
        return
    raise UserError(f"{path} reaches a test accuracy of {network.test_accuracy:.4f} here on "
                    f"{len(dataset.test.labels):,} {dataset.name} test images, not the {expected:.4f} of "
                    f"--expect-accuracy (more than {ACCURACY_TOLERANCE} apart): check that data.scale, data.mean and "
                    "data.std scale the images as they were when it was trained, that its activation is "
                    f"model.activation = {network.activation}, and that the file holds the network you measured")


LARGE = 256 * 10**6  # bytes: a network file this big is worth a word


def size_note(path: Path, network: Network, cached: bool) -> tuple[str, ...]:
    """A word on a large network file made large by its weight snapshots: that the cache holds it too,
    and the fix (none for a network that is large by itself, as one read from a file without snapshots)."""
    size = path.stat().st_size
    if size < LARGE or not len(network.snapshots.step):
        return ()
    twice = " and once more in the cache" if cached else ""
    return (f"{path.name} is {gigabytes(size)}, most of it its {len(network.snapshots.step):,} weight snapshots; it "
            f"is written to the output folder{twice}: raise train.snapshot_every to keep fewer",)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_model_of(cfg: RunConfig, network: Network, path: str) -> tuple[RunConfig, tuple[str, ...]]:
    """The config with the model of a network read from a file (what was laid out, so that config.yaml
    records it), and a note when that differs from the config's own model."""
    model = (ModelConfig(hidden=tuple(network.sizes[1:-1]), activation=network.activation, file=cfg.model.file)
             if network.layers is None else
             ModelConfig(activation=network.activation, layers=network.layers, file=cfg.model.file))
    if model == cfg.model:
        return cfg, ()
    return dataclasses.replace(cfg, model=model), (
        f"{path} holds a {'-'.join(map(str, network.sizes))} {network.activation} network: it replaces the config's "
        f"model (hidden {list(cfg.model.hidden)}, {cfg.model.activation}), and config.yaml records the file's",)


def given_header(path: str, digest: str) -> str:
    """config.yaml's opening lines for a run on a network read from a file."""
    return (f"# The network was read from {path} (SHA-256 {digest[:16]}...), not trained from this config;\n"
            f"# to repeat the run: python -m layout.run config.yaml --network {path}\n"
            "# The model below is the file's; the train section is the config's and did not make the network.\n")


def training_summary(result: TrainResult) -> str:
    net, fig = result.network, result.figures
    how = (f"read from {fig['network_file']}" if fig["network_file"] else
           "reused from cache" if result.reused else f"trained in {net.train_seconds:.1f} s")
    return (f"{net.dataset} {'-'.join(map(str, net.sizes))} {net.activation}, {net.epochs} epochs ({how})\n"
            f"test accuracy {net.test_accuracy:.4f} on {fig['n_test']} images, "
            f"train accuracy {net.train_accuracy:.4f}")
