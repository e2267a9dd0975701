"""``stagelearn decode --latents``: the per-tile latent codes of a compressed file as plain arrays.

Latent codes are features for clustering regimes of the field; each encoder version has its own
basis, so rows are tagged with the version their codes belong to.
"""

from __future__ import annotations

import numpy as np

from .errors import StagelearnError
from .output_reader import CompressedOutputReader


def collect_latents(path, var, step=None):
    """Latent codes of ``var``, one row per (step, tile), from a compressed output file.

    Parameters
    ----------
    path : str
        ``compressed.bp`` written by staging.
    var : str
    step : int, optional
        One producer output step; default every step with an encoder (warm-up steps before the
        first encoder are skipped).

    Returns
    -------
    arrays : dict of str to ndarray
        ``step`` (n,) int64, ``origin`` (n, ndim) int64 (each tile's first cell), ``latents``
        (n, n_components) float32, ``encoder_version`` (n,) int64.
    n_steps : int
        Steps that contributed rows.

    Raises
    ------
    StagelearnError
        If ``step`` has no latent codes, or no step has.
    """
    reader = CompressedOutputReader(path)
    steps = [step] if step is not None else reader.steps
    rows = {"step": [], "origin": [], "latents": [], "encoder_version": []}
    for s in steps:
        try:
            origin, latents, version = reader.latents(s, var)
        except StagelearnError:
            if step is not None:
                raise
            continue  # warm-up steps before the first encoder
        rows["step"].append(np.full(len(origin), s))
        rows["origin"].append(origin)
        rows["latents"].append(latents)
        rows["encoder_version"].append(version)
    if not rows["step"]:
        raise StagelearnError(f"{path}: no coded steps of {var}")
    return {k: np.concatenate(v) for k, v in rows.items()}, len(rows["step"])


def export_latents(path, var, output, step=None):
    """Write :func:`collect_latents` to the ``.npz`` file ``output`` (plain ``.npy`` members: load with
    ``np.load(output, allow_pickle=False)``); returns a one-line description of what was written."""
    arrays, n_steps = collect_latents(path, var, step)
    np.savez(output, **arrays)
    versions = sorted(set(arrays["encoder_version"].tolist()))
    return (f"{var}: {len(arrays['step'])} tiles x {arrays['latents'].shape[1]} latents from {n_steps} steps "
            f"-> {output} (encoder versions {versions}: each has its own basis; compare latents within one version)")
