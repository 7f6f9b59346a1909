"""trajectory.npz: a simulation's frames and its particles, as arrays only (never pickled), written by
every run and read back with --trajectory or from the layout cache. Each file records what made it
(`LaidOut`): a digest of the simulation's inputs, the layout settings, the animation's timeline and the
cache key; a file made otherwise is refused, so that no layout is ever shown, or tested against its
nulls, under settings it was not made with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layout.core.config import LayoutConfig
from layout.core.errors import UserError
from layout.core.files import list_of, optional, read_npz, require_arrays, require_meta, whole, write_atomic
from layout.core.plain import differences, to_plain
from layout.engine.features import NeuronFeatures
from layout.engine.particles import Particles
from layout.engine.simulate import Trajectory


@dataclass(frozen=True)
class LaidOut:
    """What made a trajectory. inputs: a digest of what the network gives the simulation (the neurons'
    output vectors, classes and layers, and for the training timeline the weight snapshots; the anchors
    follow from the layout settings); layout: the layout settings; timeline: render.timeline; key: the
    layout cache key it was stored under."""

    inputs: str
    layout: LayoutConfig
    timeline: str
    key: str

    def plain(self) -> dict:
        return {"inputs": self.inputs, "layout": to_plain(self.layout), "timeline": self.timeline, "key": self.key}


def inputs_digest(particles: Particles, snapshots: tuple[np.ndarray, ...] = ()) -> str:
    """SHA-256 of the neurons' particle data (and the given weight snapshots): equal only for the same
    network seen through the same data."""
    neurons = ~particles.is_anchor
    digest = hashlib.sha256()
    for array in (particles.vectors[neurons], particles.group[neurons], particles.layer[neurons], *snapshots):
        digest.update(f"{array.shape} {array.dtype.str};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


HALF_ABOVE = 50_000  # above this many particles the frames are stored as float16 (the last one also exact)
HALF_MAX = 60_000.0  # float16's largest finite value is 65,504: frames reaching past this stay float32


def stored_frames(positions: np.ndarray) -> dict[str, np.ndarray]:
    """The frames as trajectory.npz stores them: float32 positions [T, P, 3]; or, above HALF_ABOVE
    particles, float16 ones (half the size: 1,000,000 particles' 101 frames are 0.6 GB instead of 1.2)
    and the last frame, from which the metrics and the structure tests are computed, exact as final
    [P, 3] float32."""
    if positions.shape[1] <= HALF_ABOVE or not np.abs(positions).max(initial=0.0) < HALF_MAX:
        return {"positions": positions.astype(np.float32)}
    return {"positions": positions.astype(np.float16), "final": positions[-1].astype(np.float32)}


def save_trajectory(path: Path, trajectory: Trajectory, particles: Particles, features: NeuronFeatures,
                    made_by: LaidOut, labels: tuple[str, ...] | None = None) -> Path:
    """trajectory.npz: positions [T, P, 3] (see stored_frames), energy [T, n_terms], step [T], and per
    particle group, layer, is_anchor, movable; `meta` is a JSON string with the term names, counts,
    frame titles and what made it (`made_by`)."""
    meta = {"terms": list(trajectory.terms), "settled_step": trajectory.settled_step,
            "n_neurons": features.n_neurons, "n_particles": particles.n_particles,
            "anchor_mode": particles.anchor_mode, "class_names": list(features.class_names),
            "labels": list(labels) if labels else None, "made_by": made_by.plain()}
    arrays = {**stored_frames(trajectory.positions), "energy": trajectory.energy, "step": trajectory.step,
              "group": particles.group, "layer": particles.layer, "is_anchor": particles.is_anchor,
              "movable": particles.movable, "meta": np.array(json.dumps(meta))}
    return write_atomic(path, lambda f: np.savez(f, **arrays))


TEXTS = list_of(lambda v: isinstance(v, str))
META_CHECKS = {
    "terms": (TEXTS, "a list of term names"),
    "labels": (optional(TEXTS), "a list of frame titles"),
    "settled_step": (optional(whole), "a step number"),
}


def read_trajectory(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a trajectory.npz, checked for everything that does not depend on the network."""
    what = "trajectory file"
    arrays, meta = read_npz(path, what)
    require_meta(path, what, meta, META_CHECKS)
    terms, labels = meta["terms"], meta["labels"]
    n_frames = len(arrays.get("positions", ()))
    require_arrays(path, what, arrays, {"positions": (n_frames, None, 3), "energy": (n_frames, len(terms)),
                                        "step": (n_frames,), "group": (None,)})
    if "final" in arrays:
        require_arrays(path, what, arrays, {"final": arrays["positions"].shape[1:]})
    if n_frames == 0 or (labels is not None and len(labels) != n_frames):
        raise UserError(f"{path} is damaged: {n_frames} frames and {len(labels or ())} frame titles")
    return arrays, meta


def check_settings(path: Path, meta: dict, layout: LayoutConfig, timeline: str) -> dict:
    """A trajectory's record of what made it (its meta's `made_by`), if it was made with these layout
    settings and timeline; else a UserError naming what differs."""
    theirs = meta.get("made_by")
    if not isinstance(theirs, dict):
        raise UserError(f"{path} was written by an earlier version of neuron-layout, which did not record the layout "
                        "settings that made it: lay the network out again (leave out --trajectory)")
    recorded = theirs.get("layout")
    if isinstance(recorded, dict):  # written before layout.layers existed: the dense layers were laid out
        recorded = {"layers": "dense", **recorded}
    changed = (differences(recorded, layout, "layout")
               + differences(theirs.get("timeline"), timeline, "render.timeline"))
    if changed:
        raise UserError(f"{path} was laid out with other settings ({'; '.join(changed[:3])}"
                        f"{f'; and {len(changed) - 3} more' if len(changed) > 3 else ''}): its nulls must be laid "
                        "out as it was, so run it with the config.yaml written beside it, or leave out --trajectory")
    return theirs


def load_trajectory(path: Path, particles: Particles, made_by: LaidOut, *, key: bool = False
                    ) -> tuple[Trajectory, tuple[str, ...] | None]:
    """(trajectory, frame titles) from a trajectory.npz that save_trajectory wrote for these particles,
    made as `made_by` says (with `key`, stored under its cache key too).

    Anything else (damaged, pickled, laid out for another network or with other settings) is a
    UserError saying so."""
    arrays, meta = read_trajectory(path)
    theirs = check_settings(path, meta, made_by.layout, made_by.timeline)
    n, positions = particles.n_particles, arrays["positions"]
    if positions.shape[1] != n or theirs.get("inputs") != made_by.inputs:
        raise UserError(f"{path} was laid out for another network ({positions.shape[1]} particles, this one has "
                        f"{n}, or other output weights): use the trajectory.npz written with its network.npz")
    if key and theirs.get("key") != made_by.key:
        raise UserError(f"{path} was stored under another key")
    positions = positions.astype(np.float32)
    if "final" in arrays:
        positions[-1] = arrays["final"]
    trajectory = Trajectory(positions=positions, energy=arrays["energy"], step=arrays["step"],
                            terms=tuple(meta["terms"]), settled_step=meta.get("settled_step"))
    return trajectory, tuple(meta["labels"]) if meta.get("labels") else None


def cached_trajectory(path: Path, particles: Particles, made_by: LaidOut
                      ) -> tuple[tuple[Trajectory, tuple[str, ...] | None] | None, str | None]:
    """(load_trajectory's result, None) for an intact cache entry stored under made_by's key; (None, None)
    when there is none; (None, why) when it cannot be used (it is then replaced)."""
    if not path.is_file():
        return None, None
    try:
        return load_trajectory(path, particles, made_by, key=True), None
    except UserError as e:
        return None, f"the cached layout could not be used ({e}): laid out again"
