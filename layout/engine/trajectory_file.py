"""trajectory.npz: a simulation's frames and its particles, as arrays only (never pickled), written by
every run and read back with --trajectory or from the layout cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from layout.core.errors import UserError
from layout.core.files import read_npz, require_arrays, write_atomic
from layout.engine.features import NeuronFeatures
from layout.engine.particles import Particles
from layout.engine.simulate import Trajectory


def save_trajectory(path: Path, trajectory: Trajectory, particles: Particles, features: NeuronFeatures,
                    labels: tuple[str, ...] | None = None) -> Path:
    """trajectory.npz: positions [T, P, 3], energy [T, n_terms], step [T], and per particle group,
    layer, is_anchor, movable; `meta` is a JSON string with the term names, counts and frame titles."""
    meta = {"terms": list(trajectory.terms), "settled_step": trajectory.settled_step,
            "n_neurons": features.n_neurons, "n_particles": particles.n_particles,
            "anchor_mode": particles.anchor_mode, "class_names": list(features.class_names),
            "labels": list(labels) if labels else None}
    arrays = {"positions": trajectory.positions, "energy": trajectory.energy, "step": trajectory.step,
              "group": particles.group, "layer": particles.layer, "is_anchor": particles.is_anchor,
              "movable": particles.movable, "meta": np.array(json.dumps(meta))}
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def read_trajectory(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a trajectory.npz, checked for everything that does not depend on the network."""
    what = "trajectory file"
    arrays, meta = read_npz(path, what)
    terms, labels = meta.get("terms"), meta.get("labels")
    if not isinstance(terms, list) or (labels is not None and not isinstance(labels, list)):
        raise UserError(f"{path} is not a {what} written by neuron-layout: its meta has no term names")
    n_frames = len(arrays.get("positions", ()))
    require_arrays(path, what, arrays, {"positions": (n_frames, None, 3), "energy": (n_frames, len(terms)),
                                        "step": (n_frames,), "group": (None,)})
    if n_frames == 0 or (labels is not None and len(labels) != n_frames):
        raise UserError(f"{path} is damaged: {n_frames} frames and {len(labels or ())} frame titles")
    return arrays, meta


def load_trajectory(path: Path, particles: Particles) -> tuple[Trajectory, tuple[str, ...] | None]:
    """(trajectory, frame titles) from a trajectory.npz written by save_trajectory for these particles.

    Anything else (damaged, pickled, or laid out for another network) is a UserError saying so."""
    arrays, meta = read_trajectory(path)
    n, positions = particles.n_particles, arrays["positions"]
    if positions.shape[1] != n or not np.array_equal(arrays["group"], particles.group):
        raise UserError(f"{path} was laid out for another network ({positions.shape[1]} particles, this one has "
                        f"{n}, or other dominant classes): use the trajectory.npz written with its network.npz")
    trajectory = Trajectory(positions=positions.astype(np.float32), energy=arrays["energy"], step=arrays["step"],
                            terms=tuple(meta["terms"]), settled_step=meta.get("settled_step"))
    return trajectory, tuple(meta["labels"]) if meta.get("labels") else None


def cached_trajectory(path: Path, particles: Particles) -> tuple[Trajectory, tuple[str, ...] | None] | None:
    """load_trajectory, or None when the cache entry is missing or unusable (it is then replaced)."""
    try:
        return load_trajectory(path, particles)
    except UserError:
        return None
