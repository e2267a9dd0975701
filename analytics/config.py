"""Configuration sections owned by the analytics side (validated with pydantic, extra keys forbidden)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LearnerConfig(BaseModel):
    """``learner:`` section: what staging learns and when it pushes an encoder back."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["pca"] = Field("pca", description="Learner family (PCA now; autoencoders later).")
    algorithm: Literal["exact", "oneshot", "subspace", "oja", "iag", "gossip", "warm_ritz"] = Field(
        "exact", description="Distributed PCA algorithm (docs/distributed_pca.md); exact = IncrementalPCA merge."
    )
    n_components: Optional[int] = Field(
        None, ge=1, description="Components kept; null keeps the full basis (transform coding truncates by quantization)."
    )
    forgetting_factor: float = Field(
        1.0, gt=0.0, le=1.0, description="Weight of past statistics per update; 1 = exact PCA of all data seen."
    )
    warmup_steps: int = Field(5, ge=1, description="Output steps learned before the first encoder is published.")
    publish_every: int = Field(20, ge=1, description="Output steps between encoder versions.")

    @model_validator(mode="after")
    def _iterative_needs_k(self):
        if self.algorithm != "exact" and self.n_components is None:
            raise ValueError(f"learner.n_components is required with algorithm {self.algorithm!r} (iterative methods "
                             "compute a k-dimensional basis; exact can keep the full one)")
        if self.algorithm != "exact" and self.forgetting_factor != 1.0:
            raise ValueError(f"learner.forgetting_factor applies to algorithm 'exact' only, not {self.algorithm!r}")
        return self


class CodecConfig(BaseModel):
    """``codec:`` section: the error target and the raw-tile budget of the learned codec."""

    model_config = ConfigDict(extra="forbid")

    psnr_db: float = Field(
        42.0, gt=0, le=200, description="Target PSNR (dB) that sets the quantization step of each variable."
    )
    raw_fraction: float = Field(
        0.01, ge=0.0, le=0.5, description="Fraction of tiles per block sent raw (the worst reconstructed)."
    )
    zstd_level: int = Field(3, ge=1, le=22, description="zstd level of the lossless sections.")


class AnomalyConfig(BaseModel):
    """``anomaly:`` section: flag tiles the current encoder reconstructs unusually badly."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Score tiles, send flagged ones raw, list them in anomalies.csv.")
    method: Literal["threshold", "topk"] = Field("threshold", description="Flag scores above `threshold`, or the `top_k` per block.")
    threshold: float = Field(8.0, gt=0, description="Robust z-score of the tile log-error above which a tile is flagged.")
    top_k: int = Field(4, ge=1, description="Tiles flagged per producer block with method topk (scores above report_score).")
    report_score: float = Field(4.0, gt=0, description="Tiles scoring above this go on the per-step anomaly map.")
    max_report: int = Field(16, ge=1, description="At most this many map entries per block and step (highest scores).")
    persistence_steps: int = Field(5, ge=1, description="A tile flagged this many steps in a row becomes the new normal.")
    calibration_steps: int = Field(3, ge=1, description="Steps of error statistics before the first encoder that scores.")
    explained_variance: float = Field(0.999, gt=0, lt=1, description="The model whose residual is scored keeps the components explaining this fraction of the variance.")
    decay: float = Field(0.9, gt=0, lt=1, description="Forgetting factor of the running error histogram per step.")
