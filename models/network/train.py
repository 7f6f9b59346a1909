"""Training with optax: one jitted function runs a whole epoch as a lax.scan over batches.

`python -m layout.train CONFIG` runs this stage alone (layout/train.py).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from layout.core import ctrl_c
from layout.core.config import ModelConfig, TrainConfig
from layout.core.errors import DataError, UserError
from layout.core.layers import widths
from models.data.datasets import Dataset, flat_pixels
from models.network.cnn import apply_layers, init_layers
from models.network.mlp import Params, apply, init_params, layer_sizes, weight_penalty
from models.network.network import History, Inputs, Network, Snapshots

EVAL_CHUNK = 250  # test images per forward pass when an epoch ends


class TrainingError(UserError):
    """Training diverged."""


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did; passed to the `on_epoch` callback as training goes."""

    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's batches (penalties excluded)
    test_loss: float
    test_accuracy: float


class EpochOut(NamedTuple):
    train_loss: jax.Array
    test_loss: jax.Array
    test_accuracy: jax.Array
    snapshots: Params  # [n_slots, ...] per leaf; the first `n_snapshots` rows are filled
    n_snapshots: jax.Array


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    if cfg.optimizer == "adam":
        return optax.adam(cfg.learning_rate)
    return optax.sgd(cfg.learning_rate, momentum=cfg.momentum or None)


def to_device(images: np.ndarray, labels: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Images [n, H, W(, C)] uint8 -> [n, C * H * W] uint8 (scaled batch by batch) and labels, on the device.

    jax.device_put, unlike jnp.asarray, hands a numpy buffer over without a compiled copy (20x faster here)."""
    return jax.device_put(flat_pixels(images)), jax.device_put(labels)


@functools.lru_cache(maxsize=None)
def model_functions(model: ModelConfig, n_classes: int, inputs: Inputs = Inputs()) -> tuple[Callable, Callable]:
    """(init(key) -> parameters, forward(parameters, uint8 pixels [n, H * W]) -> (logits, hidden activations))
    of the network `model` describes, its pixels scaled as `inputs` says: the MLP of model.hidden, or the
    layers of model.layers. One pair per model, so that compiled programs are reused."""
    if model.layers is None:
        sizes = layer_sizes(inputs.n_pixels, model.hidden, n_classes)
        return (lambda key: init_params(key, sizes, model.activation),
                lambda params, x: apply(params, inputs.of_pixels(x), model.activation))
    return (lambda key: init_layers(key, model.layers, model.activation, n_classes, inputs.shape),
            lambda params, x: apply_layers(params, inputs.of_pixels(x), model.layers, model.activation,
                                           fast_gradients=True, input_shape=inputs.shape))


def logits_of(params: Params, images: jax.Array, forward: Callable) -> jax.Array:
    """[n, n_classes] for uint8 images [n, H * W], EVAL_CHUNK images per pass (lax.map over the full
    chunks, then the rest): a CNN's patches of all 10,000 test images at once would take 0.8 GB."""
    def logits(x):
        return forward(params, x)[0]

    n_full = images.shape[0] // EVAL_CHUNK * EVAL_CHUNK
    parts = [logits(images[n_full:])] if n_full < images.shape[0] else []
    if n_full:
        full = jax.lax.map(logits, images[:n_full].reshape(-1, EVAL_CHUNK, images.shape[1]))
        parts.insert(0, full.reshape(n_full, -1))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def evaluate(params: Params, images: jax.Array, labels: jax.Array, forward: Callable) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, accuracy) of `params` on uint8 images [n, H * W] and labels [n]."""
    logits = logits_of(params, images, forward)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits.argmax(-1) == labels).mean()


evaluate_jit = jax.jit(evaluate, static_argnums=3)


def make_epoch(optimizer: optax.GradientTransformation, forward: Callable, cfg: TrainConfig,
               n_batches: int, batch_size: int, interval: int | None) -> Callable:
    """A jitted function running one epoch: shuffle, `n_batches` steps, evaluation on the test set.

    With an `interval` (snapshots that fall inside epochs), the weights after every global step that
    is a multiple of it are copied into a buffer returned with the epoch's results.
    """
    n_slots = -(-n_batches // interval) if interval else 0

    def loss_fn(params, x, y):
        logits, _ = forward(params, x)
        data_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return data_loss + weight_penalty(params, cfg.l1, cfg.l2), data_loss

    def learn(params, opt_state, x, y):
        grads, data_loss = jax.grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, data_loss

    def keep(buffer, count, params, global_step):
        take = global_step % interval == 0
        buffer = jax.lax.cond(take, lambda b: jax.tree.map(lambda s, p: s.at[count].set(p), b, params),
                              lambda b: b, buffer)
        return buffer, count + take

    def step(carry, batch):
        params, opt_state, buffer, count, global_step = carry
        params, opt_state, data_loss = learn(params, opt_state, *batch)
        if interval:
            buffer, count = keep(buffer, count, params, global_step + 1)
        return (params, opt_state, buffer, count, global_step + 1), data_loss

    @jax.jit
    def run_epoch(params, opt_state, order_key, epoch, x, y, x_test, y_test):
        key = jax.random.fold_in(order_key, epoch)
        order = jax.random.permutation(key, x.shape[0])[: n_batches * batch_size].reshape(n_batches, batch_size)
        buffer = jax.tree.map(lambda p: jnp.zeros((n_slots, *p.shape), p.dtype), params)
        carry = (params, opt_state, buffer, jnp.int32(0), epoch * n_batches)
        (params, opt_state, buffer, count, _), losses = jax.lax.scan(
            lambda c, idx: step(c, (x[idx], y[idx])), carry, order)
        test_loss, test_accuracy = evaluate(params, x_test, y_test, forward)
        return params, opt_state, EpochOut(losses.mean(), test_loss, test_accuracy, buffer, count)

    return run_epoch


def initial_state(optimizer: optax.GradientTransformation, init: Callable,
                  seed: int) -> tuple[Params, optax.OptState, jax.Array]:
    """(parameters, optimizer state, key for the batch order) from `seed`, in one compiled call."""

    @jax.jit
    def make(seed):
        init_key, order_key = jax.random.split(jax.random.key(seed, impl="rbg"))
        params = init(init_key)
        return params, optimizer.init(params), order_key

    return make(seed)


def snapshots_taken(out: EpochOut, params: Params, epoch: int, n_batches: int, interval: int,
                    in_epoch: bool) -> list[tuple[int, Params]]:
    """(step, weights as numpy) for each snapshot due in this epoch."""
    if not in_epoch:
        end = (epoch + 1) * n_batches
        return [(end, jax.tree.map(np.asarray, params))] if end % interval == 0 else []
    first = (epoch * n_batches) // interval + 1
    buffer = jax.tree.map(np.asarray, out.snapshots)
    return [((first + i) * interval, jax.tree.map(lambda s: s[i], buffer)) for i in range(int(out.n_snapshots))]


def check_batches(n_train: int, n_test: int, cfg: TrainConfig) -> None:
    """Refuse data that leaves no test image, or (when training) no full batch: an epoch leaves its
    last partial batch out, so with fewer examples than a batch it would train on nothing."""
    if n_train == 0 or n_test == 0:
        raise DataError("no examples left after data.classes and data.limit: keep more classes or a larger limit")
    if cfg.epochs and n_train < cfg.batch_size:
        raise DataError(f"{n_train} training example{'s' if n_train > 1 else ''} (after data.classes and "
                        f"data.limit) are fewer than one batch of train.batch_size = {cfg.batch_size}, and an "
                        f"epoch trains on full batches only: raise data.limit to at least {cfg.batch_size} or "
                        "lower train.batch_size")


def train(model: ModelConfig, cfg: TrainConfig, dataset: Dataset,
          on_epoch: Callable[[EpochStats], None] | None = None, inputs: Inputs | None = None) -> Network:
    """Train the network `model` describes on `dataset`, its pixels scaled as `inputs` says (default:
    0..1), as `cfg` says; same config and data, same weights."""
    inputs = Inputs(shape=dataset.input_shape) if inputs is None else inputs
    start = time.perf_counter()
    check_batches(len(dataset.train.labels), len(dataset.test.labels), cfg)
    n_train = len(dataset.train.labels)
    init, forward = model_functions(model, dataset.n_classes, inputs)
    batch_size = min(cfg.batch_size, n_train)  # smaller only without training (epochs = 0)
    n_batches = n_train // batch_size
    x, y = to_device(dataset.train.images, dataset.train.labels)
    x_test, y_test = to_device(dataset.test.images, dataset.test.labels)

    optimizer = make_optimizer(cfg)
    params, opt_state, order_key = initial_state(optimizer, init, cfg.seed)
    interval = cfg.snapshot_every * (n_batches if cfg.snapshot_unit == "epoch" else 1)
    in_epoch = interval % n_batches != 0  # snapshots fall inside epochs: keep them in the scan
    run_epoch = make_epoch(optimizer, forward, cfg, n_batches, batch_size, interval if in_epoch else None)

    snapshots = [(0, jax.tree.map(np.asarray, params))]
    history = []
    for epoch in range(cfg.epochs):
        ctrl_c.check()
        params, opt_state, out = run_epoch(params, opt_state, order_key, epoch, x, y, x_test, y_test)
        stats = EpochStats(epoch + 1, float(out.train_loss), float(out.test_loss), float(out.test_accuracy))
        if not np.isfinite(stats.train_loss):
            raise TrainingError(f"the training loss became {stats.train_loss} in epoch {epoch + 1}: lower "
                                f"train.learning_rate (now {cfg.learning_rate:g}) or the weight penalties")
        history.append(stats)
        snapshots += snapshots_taken(out, params, epoch, n_batches, interval, in_epoch)
        if on_epoch:
            on_epoch(stats)

    test_loss, test_accuracy = evaluate_jit(params, x_test, y_test, forward)
    _, train_accuracy = evaluate_jit(params, x, y, forward)
    return Network(
        sizes=network_sizes(model, dataset.n_classes, inputs.n_pixels),
        layers=model.layers,
        activation=model.activation,
        weights=tuple(np.asarray(layer["w"]) for layer in params),
        biases=tuple(np.asarray(layer["b"]) for layer in params),
        dataset=dataset.name,
        classes=dataset.classes,
        class_names=dataset.class_names,
        history=make_history(history),
        snapshots=make_snapshots(snapshots, n_batches, x_test, y_test, forward),
        test_accuracy=float(test_accuracy),
        train_accuracy=float(train_accuracy),
        train_seconds=time.perf_counter() - start,
        epochs=cfg.epochs,
        inputs=inputs,
    )


def make_history(stats: list[EpochStats]) -> History:
    return History(
        epoch=np.array([s.epoch for s in stats], dtype=np.int32),
        train_loss=np.array([s.train_loss for s in stats], dtype=np.float32),
        test_loss=np.array([s.test_loss for s in stats], dtype=np.float32),
        test_accuracy=np.array([s.test_accuracy for s in stats], dtype=np.float32),
    )


def network_sizes(model: ModelConfig, n_classes: int, n_inputs: int) -> tuple[int, ...]:
    """Network.sizes: the inputs, each hidden layer's width (a conv layer's channels), the outputs."""
    if model.layers is None:
        return layer_sizes(n_inputs, model.hidden, n_classes)
    return (n_inputs, *widths(model.layers), n_classes)


def make_snapshots(taken: list[tuple[int, Params]], n_batches: int, x_test: jax.Array, y_test: jax.Array,
                   forward: Callable) -> Snapshots:
    steps = np.array([step for step, _ in taken], dtype=np.int64)
    accuracy = [float(evaluate_jit(p, x_test, y_test, forward)[1]) for _, p in taken]
    n_layers = len(taken[0][1])
    return Snapshots(
        step=steps,
        epoch=(steps / n_batches).astype(np.float32),
        test_accuracy=np.array(accuracy, dtype=np.float32),
        weights=tuple(np.stack([p[l]["w"] for _, p in taken]) for l in range(n_layers)),
        biases=tuple(np.stack([p[l]["b"] for _, p in taken]) for l in range(n_layers)),
    )


def enable_compilation_cache(folder) -> None:
    """Keep compiled XLA programs in `folder` so that a second run skips compilation."""
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
