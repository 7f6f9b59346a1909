"""What the commands share: arguments, config loading, progress bars, and the training stage
(dataset -> network -> network.npz, metrics.json, config.yaml in the output folder).

Nothing here prints; layout/run.py decides what the user sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layout.config import RunConfig, config_to_yaml, load_config
from layout.files import cache_dir, write_json, write_text

if TYPE_CHECKING:  # the models package imports jax: load it only when a command needs it
    from models.data import Dataset
    from models.train import Network


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="YAML config file, e.g. configs/euclid.yaml")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/<config name>)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's IDX files")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--retrain", action="store_true", help="train again even if a cached network matches")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.config, args.set)
    if args.data_dir:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=args.data_dir))
    return cfg


def output_dir(args: argparse.Namespace, cfg: RunConfig) -> Path:
    return Path(args.out) if args.out else Path("runs") / cfg.name


@dataclass(frozen=True)
class TrainResult:
    """What the training stage produced and where it put it."""

    dataset: Dataset
    network: Network
    key: str
    reused: bool
    written: tuple[Path, ...]


def training_stage(cfg: RunConfig, out: Path, *, retrain: bool = False) -> TrainResult:
    """Load the data, train or reuse the network, and write config.yaml, network.npz and metrics.json."""
    from models.data import load_dataset
    from models.store import obtain_network, save_network
    from models.train import enable_compilation_cache

    interactive = sys.stderr.isatty()
    enable_compilation_cache(cache_dir() / "jax")
    dataset = load_dataset(cfg.data, progressbar=interactive)
    with epoch_bar(cfg.train.epochs) as on_epoch:
        network, key, reused = obtain_network(cfg, dataset, retrain=retrain, on_epoch=on_epoch)
    metrics = {
        "dataset": dataset.name,
        "sizes": list(network.sizes),
        "activation": network.activation,
        "classes": list(network.classes),
        "n_train": int(len(dataset.train.labels)),
        "n_test": int(len(dataset.test.labels)),
        "n_params": network.n_params,
        "epochs": network.epochs,
        "test_accuracy": network.test_accuracy,
        "train_accuracy": network.train_accuracy,
        "train_seconds": network.train_seconds,
        "network_key": key,
        "reused": reused,
    }
    written = (
        write_text(out / "config.yaml", config_to_yaml(cfg)),
        save_network(out / "network.npz", network, key),
        write_json(out / "metrics.json", metrics),
    )
    return TrainResult(dataset, network, key, reused, written)


class epoch_bar:
    """A tqdm bar over epochs, used as `with epoch_bar(n) as on_epoch:`; silent when stderr is no terminal."""

    def __init__(self, n_epochs: int):
        from tqdm import tqdm

        self.bar = tqdm(total=n_epochs, desc="training", unit="epoch", disable=not sys.stderr.isatty())

    def __enter__(self):
        return self.update

    def update(self, stats) -> None:
        self.bar.set_postfix(loss=f"{stats.train_loss:.3f}", test_acc=f"{stats.test_accuracy:.4f}")
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        self.bar.close()


def training_summary(result: TrainResult) -> str:
    net = result.network
    how = "reused from cache" if result.reused else f"trained in {net.train_seconds:.1f} s"
    lines = [
        f"{net.dataset} {'-'.join(map(str, net.sizes))} {net.activation}, {net.epochs} epochs ({how})",
        f"test accuracy {net.test_accuracy:.4f} on {len(result.dataset.test.labels)} images, "
        f"train accuracy {net.train_accuracy:.4f}",
        "wrote " + ", ".join(str(p) for p in result.written),
    ]
    return "\n".join(lines)
