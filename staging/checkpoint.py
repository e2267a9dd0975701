"""Learner checkpoints: staging's state as named arrays plus a JSON file, so a new staging job can go on.

``<run_dir>/checkpoint/`` holds ``learner.npz`` (float64 arrays, one set per variable:
``<X>/mean_``, ``<X>/components_``, ``<X>/scatter`` and the other fitted attributes of
:class:`~stagelearn.analytics.incremental_pca.IncrementalPCA`; loaded with ``allow_pickle=False``)
and ``state.json`` (format, last step stored, encoder version, tile shapes, value ranges, sample
counts). Each file is written to a temporary name and renamed; ``state.json`` goes last and names
the step the arrays belong to, so a crash mid-write leaves the previous checkpoint readable.

Restarting (``staging.restart_from``) rebuilds the learners bit for bit: the restarted basis is the
checkpointed one, and the next encoder version is the checkpointed one plus one. Only the exact
PCA learner (``learner.type: pca``, ``algorithm: exact``) is checkpointed; its whole state is its
running mean and scatter matrix (no replay buffer).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ..analytics.incremental_pca import IncrementalPCA
from .errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT = "stagelearn.checkpoint/1"
_ARRAYS = ("mean_", "components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "var_")
_SCALARS = ("n_samples_seen_", "n_features_in_", "n_components_", "noise_variance_")


def supported(learner_cfg):
    """True when the configured learner can be checkpointed (exact incremental PCA)."""
    return learner_cfg.type == "pca" and learner_cfg.algorithm == "exact"


def save(directory, *, learners, step, encoder_version, published, tile_shapes, ranges):
    """Write a checkpoint (call on one rank: the exact PCA state is the same on every rank).

    Parameters
    ----------
    directory : str
    learners : dict of str to IncrementalPCA
        Fitted learners (unfitted ones are skipped).
    step : int
        Last output step learned.
    encoder_version : int
        Last published encoder version (0: none yet).
    published : list of (int, int)
        ``(version, step)`` of each publication.
    tile_shapes : dict of str to tuple of int
    ranges : dict of str to (float, float)
    """
    os.makedirs(directory, exist_ok=True)
    arrays, scalars = {"step": np.array([int(step)])}, {}
    for var, est in learners.items():
        if not hasattr(est, "components_"):
            continue
        for name in _ARRAYS:
            arrays[f"{var}/{name}"] = np.asarray(getattr(est, name), dtype=np.float64)
        arrays[f"{var}/scatter"] = np.asarray(est._scatter, dtype=np.float64)
        scalars[var] = {name: getattr(est, name) for name in _SCALARS}
        scalars[var].update(n_components=est.n_components, forgetting_factor=est.forgetting_factor)
    tmp = os.path.join(directory, "learner.npz.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, os.path.join(directory, "learner.npz"))
    state = {"format": FORMAT, "step": int(step), "encoder_version": int(encoder_version),
             "published": [list(p) for p in published], "tile_shapes": {k: list(v) for k, v in tile_shapes.items()},
             "ranges": {k: [float(a), float(b)] for k, (a, b) in ranges.items()}, "learners": _jsonable(scalars)}
    tmp = os.path.join(directory, "state.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(directory, "state.json"))
    logger.info("checkpoint at step %d (encoder version %d) in %s", step, encoder_version, directory)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def load(directory, comm):
    """Read a checkpoint and rebuild its learners over ``comm``.

    Returns
    -------
    state : dict
        ``state.json`` with tuples for tile shapes and ranges.
    learners : dict of str to IncrementalPCA

    Raises
    ------
    ConfigError
        If the directory holds no checkpoint, an unknown format, or arrays from another step.
    """
    state_path, npz_path = os.path.join(directory, "state.json"), os.path.join(directory, "learner.npz")
    if not (os.path.exists(state_path) and os.path.exists(npz_path)):
        raise ConfigError(f"staging.restart_from: {directory} holds no checkpoint (state.json + learner.npz); "
                          "point it at <earlier run>/checkpoint")
    with open(state_path, encoding="utf-8") as f:
        try:
            state = json.load(f)
        except ValueError as exc:
            raise ConfigError(f"{state_path}: unreadable checkpoint state ({exc})") from None
    if state.get("format") != FORMAT:
        raise ConfigError(f"{state_path}: checkpoint format {state.get('format')!r}, expected {FORMAT!r}")
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if int(arrays["step"][0]) != state["step"]:
        raise ConfigError(f"{directory}: learner.npz is of step {int(arrays['step'][0])} but state.json of step "
                          f"{state['step']} (a write was cut short); use an intact checkpoint")
    learners = {}
    for var, sc in state["learners"].items():
        est = IncrementalPCA(sc["n_components"], forgetting_factor=sc["forgetting_factor"], comm=comm)
        for name in _ARRAYS:
            setattr(est, name, arrays[f"{var}/{name}"])
        est._scatter = arrays[f"{var}/scatter"]
        for name in _SCALARS:
            setattr(est, name, sc[name])
        learners[var] = est
    state["tile_shapes"] = {k: tuple(v) for k, v in state["tile_shapes"].items()}
    state["ranges"] = {k: tuple(v) for k, v in state["ranges"].items()}
    return state, learners
