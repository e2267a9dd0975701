"""The ``qoi:`` section of the run YAML: velocity moments to preserve, each within a tolerance.

Example::

    qoi:
      variable: f                       # the distribution function (velocity slices of n_vpar x n_mu)
      moments:
        - {name: density, tolerance: 1.0e-3, scale: local}
        - {name: parallel_flow, tolerance: 1.0e-3, scale: density}   # relative to n v_th
        - {name: energy, tolerance: 1.0e-3, scale: local}
        - {name: my_flux, weights: [...], tolerance: 1.0e-6, scale: absolute}   # any weight vector
      store_exact_moments: false         # true: the exact moments stored as float64 (else quantized)
      raw_fraction: 0.0                  # raw slices of f (learned codec; replaces codec.raw_fraction for f)

Everything that can be judged without the data is refused here, naming the key: a tolerance that
is not a finite number > 0 (0 cannot be met by a lossy code), a relative tolerance below what
float32 output resolves, a scale naming no moment, a named moment that is not one of
:data:`~stagelearn.analytics.qoi.GYROKINETIC_MOMENTS` without weights, weights that are not finite,
and (with :class:`~stagelearn.staging.config.RunConfig`, which knows the simulation) weights of the
wrong length. See :mod:`stagelearn.analytics.qoi` and docs/gyrokinetic.md.
"""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, PositiveInt, model_validator

from .qoi import GYROKINETIC_MOMENTS, SCALES

_FROZEN = ConfigDict(extra="forbid", frozen=True)

#: The smallest relative tolerance accepted: the corrected field is stored as float32 (relative
#: resolution 6e-8 per value); below 1e-6 its rounding would use most of the tolerance.
MIN_RELATIVE_TOLERANCE = 1e-6

#: The largest ``qoi.raw_fraction`` (also what an encoder's stored moment policy may carry:
#: :func:`~stagelearn.analytics.qoi_policy.check_policy`).
MAX_RAW_FRACTION = 0.5


class MomentSpec(BaseModel):
    """One moment to preserve (an item of ``qoi.moments``)."""

    model_config = _FROZEN

    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="density, parallel_flow, energy, or the "
                      "name of a moment given by weights.")
    weights: Optional[List[FiniteFloat]] = Field(
        None, min_length=1, description="Weight of each velocity node (n_vpar * n_mu values, C "
        "order, quadrature included); the moment is sum_v weights[v] f(x, v). Default: the named gyrokinetic moment.")
    tolerance: float = Field(..., gt=0, allow_inf_nan=False, description="Allowed |moment - exact moment| at every "
                             "point, relative to `scale`.")
    scale: str = Field("local", description="absolute (field units), local (|exact moment| at the point), max (its "
                       "maximum over the block), or another moment's name (its local |value|).")

    @model_validator(mode="after")
    def _known(self):
        if self.weights is None and self.name not in GYROKINETIC_MOMENTS:
            raise ValueError(f"moment {self.name!r} is not one of {list(GYROKINETIC_MOMENTS)}: give its weights "
                             "(n_vpar * n_mu values) or use one of those names")
        if self.scale != "absolute" and self.tolerance < MIN_RELATIVE_TOLERANCE:
            raise ValueError(f"tolerance {self.tolerance:g} of moment {self.name!r} relative to {self.scale!r} cannot "
                             f"be met: the output f is float32 (relative resolution 6e-8 per value); give at least "
                             f"{MIN_RELATIVE_TOLERANCE:g} or an absolute tolerance")
        if self.name == "parallel_flow" and self.weights is None and self.scale == "local":
            raise ValueError("moment 'parallel_flow' crosses zero, so a tolerance relative to its local value is 0 "
                             "somewhere and cannot be met: use scale density (relative to n v_th), max or absolute")
        return self


class QoIConfig(BaseModel):
    """``qoi:`` section: moments of a velocity-space field kept within tolerance at every point."""

    model_config = _FROZEN

    variable: str = Field("f", description="The variable whose velocity slices carry the moments.")
    velocity_shape: Optional[Tuple[PositiveInt, PositiveInt]] = Field(
        None, description="(n_vpar, n_mu) of the variable's last two axes; taken from a gyrokinetic simulation "
        "section, required otherwise when a moment has weights.")
    moments: List[MomentSpec] = Field(..., min_length=1, description="The moments to preserve.")
    store_exact_moments: bool = Field(False, description="Store the exact moments as float64 beside f (8 bytes per "
                                      "moment per point); otherwise they travel quantized to half the tolerance.")
    raw_fraction: float = Field(
        0.0, ge=0.0, le=MAX_RAW_FRACTION, description="Fraction of `variable`'s tiles sent raw with the learned codec (replaces "
        "codec.raw_fraction for this variable). 0 by default: the moment correction guards the moments, and a raw "
        "velocity slice costs as much as hundreds of coded ones (1 % raw slices were 95 % of the bytes in "
        "benchmarks/gyrokinetic_moments.py). The raw slices are what the learner sees of this variable after the "
        "first encoder: raise it (e.g. 0.01) for a model that keeps learning during the run.")
    metric: Literal["l2", "relative", "entropy"] = Field(
        "entropy", description="Norm of the correction: entropy (f' = f exp(W^T lambda): positive f), relative (change "
        "proportional to f) or l2 (least squares; the tails of f may go negative).")

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.name for m in self.moments]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"moments {dup} are listed twice; give each moment once")
        for m in self.moments:
            if m.scale not in SCALES and m.scale not in names:
                raise ValueError(f"scale {m.scale!r} of moment {m.name!r} is neither one of {list(SCALES)} nor a "
                                 f"listed moment {names}")
        if self.velocity_shape is not None:
            self.check_weights(self.velocity_shape)
        return self

    @property
    def precision(self):
        """Side-information precision (:func:`~stagelearn.analytics.qoi_side.encode_side_info`)."""
        return "float64" if self.store_exact_moments else "quantized"

    def check_weights(self, velocity_shape, where="qoi.velocity_shape"):
        """Raise ValueError naming ``qoi.moments[i].weights`` when its length is not ``n_vpar * n_mu``."""
        n = int(velocity_shape[0]) * int(velocity_shape[1])
        for i, m in enumerate(self.moments):
            if m.weights is not None and len(m.weights) != n:
                raise ValueError(f"qoi.moments.{i}.weights ({m.name!r}) has {len(m.weights)} values; the velocity "
                                 f"grid {velocity_shape[0]} x {velocity_shape[1]} ({where}) needs {n}")
