"""The moment policy an encoder carries, and the moment set of one block built from it.

The run YAML's ``qoi:`` section (:class:`~stagelearn.analytics.qoi_config.QoIConfig`) becomes a
JSON-able dict that travels in the encoder's spec (``Encoder.qoi``), so that the producer that
codes a block and any decoder that reads it build the same :class:`~stagelearn.analytics.qoi.MomentSet`
from the policy and the block's own selection (``start``, ``count``): for a gyrokinetic simulation
the velocity grid and the magnetic field ``B`` at the block's points
(:func:`stagelearn.sim_mocks.gyrokinetic.block_B`); otherwise the user's weight vectors only.

Policy keys: ``variable``, ``moments`` (list of ``{name, tolerance, scale}``), ``weights`` (name ->
list of float, the moments given by weights), ``velocity_shape`` (``[n_vpar, n_mu]``), ``geometry``
(``{"n_r", "n_theta"}`` of a gyrokinetic mock, or None), ``precision``, ``metric`` and ``raw_fraction``
(the raw-tile budget of the variable with the learned codec, :func:`raw_fraction_for`; absent in the
specs of files written before it existed: the encoder's ``raw_fraction`` then applies).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..sim_mocks.gyrokinetic import VelocityGrid, block_B
from .qoi import GYROKINETIC_MOMENTS, MomentSet, gyrokinetic_moment_set
from .qoi_config import MAX_RAW_FRACTION
from .qoi_side import protect, restore

logger = logging.getLogger(__name__)

_KEYS = {"variable", "moments", "weights", "velocity_shape", "geometry", "precision", "metric"}
_OPTIONAL = {"raw_fraction"}


def qoi_policy(qoi, simulation=None):
    """The encoder's moment policy from the ``qoi:`` section and the simulation section.

    Parameters
    ----------
    qoi : QoIConfig or None
    simulation : object, optional
        The run's simulation section: a gyrokinetic one (``n_r``, ``n_theta``, ``n_vpar``, ``n_mu``)
        gives the velocity grid and ``B``.

    Returns
    -------
    policy : dict or None
        None when ``qoi`` is None.
    """
    if qoi is None:
        return None
    gk = simulation is not None and all(hasattr(simulation, k) for k in ("n_r", "n_theta", "n_vpar", "n_mu"))
    shape = [int(simulation.n_vpar), int(simulation.n_mu)] if gk else [int(n) for n in qoi.velocity_shape]
    return {"variable": qoi.variable,
            "moments": [{"name": m.name, "tolerance": float(m.tolerance), "scale": m.scale} for m in qoi.moments],
            "weights": {m.name: [float(w) for w in m.weights] for m in qoi.moments if m.weights is not None},
            "velocity_shape": shape,
            "geometry": {"n_r": int(simulation.n_r), "n_theta": int(simulation.n_theta)} if gk else None,
            "precision": qoi.precision, "metric": qoi.metric, "raw_fraction": float(qoi.raw_fraction)}


def check_policy(policy):
    """Validate a policy read from an encoder spec; ValueError naming what is wrong."""
    if not isinstance(policy, dict) or not _KEYS <= set(policy) <= _KEYS | _OPTIONAL:
        raise ValueError(f"encoder qoi policy must have keys {sorted(_KEYS)} (and optionally {sorted(_OPTIONAL)}), "
                         f"got {policy!r}")
    rf = policy.get("raw_fraction", 0.0)
    if isinstance(rf, bool) or not (isinstance(rf, (int, float)) and 0.0 <= rf <= MAX_RAW_FRACTION):
        raise ValueError(f"encoder qoi raw_fraction {rf!r} is not a number in [0, {MAX_RAW_FRACTION:g}] "
                         "(qoi.raw_fraction's range)")
    shape = policy["velocity_shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n >= 1 for n in shape)):
        raise ValueError(f"encoder qoi velocity_shape {shape!r} is not [n_vpar, n_mu]")
    names = [m.get("name") for m in policy["moments"]]
    for m in policy["moments"]:
        tol = m.get("tolerance")
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"encoder qoi moment {m.get('name')!r}: tolerance {tol!r} is not a finite number > 0")
        if m.get("name") not in policy["weights"] and (policy["geometry"] is None or m.get("name") not in GYROKINETIC_MOMENTS):
            raise ValueError(f"encoder qoi moment {m.get('name')!r} has neither weights nor a gyrokinetic geometry")
    n = shape[0] * shape[1]
    for name, w in policy["weights"].items():
        if name not in names or len(w) != n or not np.all(np.isfinite(np.asarray(w, dtype=np.float64))):
            raise ValueError(f"encoder qoi weights {name!r}: {len(w)} values for a velocity grid of {n} (finite)")
    if policy["precision"] not in ("quantized", "float32", "float64") or policy["metric"] not in ("l2", "relative", "entropy"):
        raise ValueError(f"encoder qoi precision {policy['precision']!r} or metric {policy['metric']!r} is unknown")
    return policy


def raw_fraction_for(encoder, var):
    """The raw-tile budget of ``var``'s blocks under ``encoder``: its moment policy's for the policy's variable
    (``qoi.raw_fraction``), else the encoder's ``raw_fraction`` (``codec.raw_fraction``).

    Parameters
    ----------
    encoder : Encoder
    var : str

    Returns
    -------
    float
    """
    q = getattr(encoder, "qoi", None)
    if q is not None and var == q["variable"] and q.get("raw_fraction") is not None:
        return float(q["raw_fraction"])
    return float(encoder.raw_fraction)


def block_moment_set(policy, start, count):
    """The :class:`MomentSet` of one block of ``policy['variable']`` (its selection ``start``, ``count``).

    Returns
    -------
    moment_set : MomentSet
        Moments in the order of ``policy['moments']``.

    Raises
    ------
    ValueError
        When the block's last two axes are not the policy's velocity grid.
    """
    n_vpar, n_mu = policy["velocity_shape"]
    count = [int(c) for c in count]
    if len(count) < 2 or tuple(count[-2:]) != (n_vpar, n_mu):
        raise ValueError(f"qoi.variable {policy['variable']!r}: block of count {count} does not end with the velocity "
                         f"grid {n_vpar} x {n_mu} (the velocity axes must be the last two and whole in every block)")
    names = [m["name"] for m in policy["moments"]]
    extra = {n: policy["weights"][n] for n in names if n in policy["weights"]}
    geo = policy["geometry"]
    named = [n for n in GYROKINETIC_MOMENTS if n in names and n not in extra]
    if geo is not None and named:
        if len(count) != 5:
            raise ValueError(f"qoi: a gyrokinetic block has 5 axes (r, theta, phi, v_par, mu), got count {count}")
        B = block_B(geo["n_r"], geo["n_theta"], start, count)
        ms = gyrokinetic_moment_set(VelocityGrid(n_vpar, n_mu), B, names=named, extra=extra)
    else:
        ms = MomentSet(tuple(extra), np.array([extra[n] for n in extra], dtype=np.float64), np.eye(len(extra)))
    order = [ms.names.index(n) for n in names]
    coeffs = ms.coeffs[..., order, :]
    return MomentSet(tuple(names), ms.basis, coeffs)


def tolerances(policy):
    """``(tolerances, scales)``: one per moment, in the order of ``policy['moments']``."""
    return [m["tolerance"] for m in policy["moments"]], [m["scale"] for m in policy["moments"]]


def protect_block(step, policy, given, reconstruction, start, count):
    """Producer side: side information for one coded block, verified against the caller's ``given``.

    Logs an error naming the step, variable and moment when a moment is outside its tolerance at
    some point (as :func:`~stagelearn.analytics.step_encode.check_bound` does for the error bound).

    Returns
    -------
    blob : bytes
    f_out : ndarray of float32
        What a decoder reconstructs after :func:`restore_block`.
    worst : float
        ``max |moment error| / tolerance`` over the points and moments (``<= 1``: all within).
    """
    ms = block_moment_set(policy, start, count)
    tols, scales = tolerances(policy)
    blob, f_out, checks = protect(given, reconstruction, ms, tols, scales, precision=policy["precision"],
                                  metric=policy["metric"])
    for c in checks:
        if not c.ok:
            logger.error("step %d: %s moment %r is outside its tolerance at %d points (worst %.3g x tolerance, "
                         "max error %.3g)", step, policy["variable"], c.name, c.n_bad, c.worst, c.max_abs_error)
    return blob, f_out, max((c.worst for c in checks), default=0.0)


def restore_block(policy, block, blob, start, count):
    """Decoder side: ``block`` (the codec's reconstruction) corrected to the moments ``blob`` carries (float32)."""
    return restore(block, block_moment_set(policy, start, count), blob, metric=policy["metric"])
