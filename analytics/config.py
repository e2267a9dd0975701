"""Configuration sections owned by the analytics side (validated with pydantic, extra keys forbidden)."""

from __future__ import annotations

from typing import Annotated, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

# NaN or inf is never a meaningful setting here; frozen: a loaded configuration is a value
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class AutoencoderConfig(BaseModel):
    """``learner.autoencoder:`` architecture and distributed training of the tile autoencoder."""

    model_config = _STRICT

    channels: List[Annotated[int, Field(ge=1, le=512)]] = Field(
        [8, 16], min_length=1, max_length=4, description="Convolution channels per stage (depth = length), 1..512 each.")
    latent_dim: int = Field(8, ge=1, le=512, description="Latent values per tile.")
    latent_bits: int = Field(8, ge=2, le=16, description="Bits of the integer latent codes (one float32 scale per tile).")
    mode: Literal["ddp", "local_sgd"] = Field(
        "ddp", description="ddp: gradient all-reduce every iteration; local_sgd: average the weights every sync_every iterations.")
    sync_every: int = Field(8, ge=1, le=10**6, description="local_sgd: iterations between model averages.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate.")
    batch_size: int = Field(256, ge=1, le=65536, description="Tiles per iteration and rank.")
    iterations_per_step: int = Field(10, ge=1, le=10**4, description="Training iterations per output step received (the most, with adaptive_iterations).")
    adaptive_iterations: bool = Field(
        True, description="Adapt the iterations per step (1 .. iterations_per_step) so that staging keeps ahead of the "
        "stream instead of holding the simulation up (staging/pacing.py).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when torch finds a GPU, else cpu.")
    threads: int = Field(1, ge=0, le=1024, description="torch threads per staging rank for training (0: torch's default).")
    timeout_s: float = Field(120.0, gt=0, description="gloo timeout of one collective (a dead staging rank ends the run).")
    rendezvous_host: str = Field(
        "127.0.0.1", min_length=1, description="Address of staging rank 0 for the torch.distributed rendezvous: loopback when all "
        "staging ranks share a node; 'auto' = rank 0's host name address; or an explicit address.")


class ReplayConfig(BaseModel):
    """``learner.replay:`` the buffer that training samples from (non-i.i.d. streams)."""

    model_config = _STRICT

    kind: Literal["none", "fifo", "reservoir", "stratified"] = Field(
        "reservoir", description="none: train on the current step only; fifo: newest tiles; reservoir: uniform over "
        "all tiles seen; stratified: equal shares per (producer, time bin).")
    max_mib: float = Field(64.0, ge=0.25, le=2**20, description="Memory cap of one buffer (MiB); each staging rank holds one per variable.")
    time_bins: int = Field(4, ge=1, le=1024, description="stratified: time bins kept per producer.")


class LearnerConfig(BaseModel):
    """``learner:`` section: what staging learns and when it pushes an encoder back."""

    model_config = _STRICT

    type: Literal["pca", "autoencoder"] = Field("pca", description="Learner family: PCA transform coder or tile autoencoder.")
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    algorithm: Literal["exact", "oneshot", "subspace", "oja", "iag", "gossip", "warm_ritz", "delta_ritz",
                       "delta_ritz_rs"] = Field(
        "exact", description="Distributed PCA algorithm (docs/distributed_pca.md); exact = IncrementalPCA merge."
    )
    n_components: Optional[int] = Field(
        None, ge=1, description="Components kept; null keeps the full basis (transform coding truncates by quantization)."
    )
    forgetting_factor: float = Field(
        1.0, gt=0.0, le=1.0, description="Weight of past statistics per update; 1 = exact PCA of all data seen."
    )
    tol: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="Iterative algorithms: an update ends when the basis is within this sin theta "
        "of the exact one (certified for delta_ritz, delta_ritz_rs; an estimate or the basis' movement for the others). "
        "null (default): for delta_ritz and delta_ritz_rs what codec.psnr_db needs, 2 * 0.1 * 10**(-psnr_db / 20), not "
        "below 1e-6 (1.6e-3 at 42 dB: the basis error then costs at most about 1 % of the codec's error budget), "
        "otherwise and with codec.error_bound 1e-3 (docs/distributed_pca.md).")
    warmup_steps: int = Field(5, ge=1, description="Output steps learned before the first encoder is published.")
    publish_every: int = Field(20, ge=1, description="Output steps between encoder versions.")

    @model_validator(mode="after")
    def _iterative_needs_k(self):
        if self.type == "autoencoder" and (self.algorithm != "exact" or self.n_components is not None
                                           or self.forgetting_factor != 1.0):
            raise ValueError("learner.algorithm, n_components and forgetting_factor set the PCA learner; with "
                             "type autoencoder set learner.autoencoder instead")
        if self.algorithm != "exact" and self.n_components is None:
            raise ValueError(f"learner.n_components is required with algorithm {self.algorithm!r} (iterative methods "
                             "compute a k-dimensional basis; exact can keep the full one)")
        if "tol" in self.model_fields_set and (self.type != "pca" or self.algorithm == "exact"):
            raise ValueError(f"learner.tol sets when an iterative PCA algorithm stops; type {self.type!r} with algorithm "
                             f"{self.algorithm!r} has none: remove learner.tol, or set type pca and an iterative "
                             "learner.algorithm (e.g. delta_ritz)")
        if self.algorithm != "exact" and self.forgetting_factor != 1.0:
            raise ValueError(f"learner.forgetting_factor applies to algorithm 'exact' only, not {self.algorithm!r}")
        return self


class ErrorBound(BaseModel):
    """``codec.error_bound:`` exactly one of ``abs`` and ``rel``."""

    model_config = _STRICT

    abs: Optional[float] = Field(None, gt=0, description="Max pointwise error in field units.")
    rel: Optional[float] = Field(None, gt=0, lt=1, description="Max pointwise error as a fraction of the step's global range.")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.abs is None) == (self.rel is None):
            raise ValueError("give exactly one of abs and rel")
        return self

    def as_dict(self):
        """``{"abs": e}`` or ``{"rel": r}``, as the encoder spec carries it."""
        return {"abs": self.abs} if self.abs is not None else {"rel": self.rel}


class CodecConfig(BaseModel):
    """``codec:`` section: the codec, its error target and (learned codec) the raw-tile budget."""

    model_config = _STRICT

    kind: Literal["stream", "learned"] = Field(
        "stream", description="stream (default): interpolation + temporal prediction with blend weights fitted in "
        "staging (analytics/stream_step.py, docs/codec.md); learned: the PCA/autoencoder tile codec of learner.type.")
    psnr_db: float = Field(
        42.0, gt=0, le=200, description="Target PSNR (dB) that sets the quantization step of each variable."
    )
    raw_fraction: float = Field(
        0.01, ge=0.0, le=0.5, description="kind learned: fraction of tiles per block sent raw (the worst reconstructed)."
    )
    entropy: Literal["rans", "adaptive"] = Field(
        "rans", description="kind stream: rans codes every frame with static interleaved rANS (fast); adaptive also "
        "codes it with a context-adaptive binary coder and sends the shorter (0.5-36 % fewer bytes, most on smooth fields, "
        "3-8x the producer's encode time; docs/codec.md).")
    zstd_level: int = Field(3, ge=1, le=22, description="zstd level of the lossless sections.")
    keyframe_every: Optional[int] = Field(
        None, ge=0, le=2**20, description="Temporal prediction: 0 codes each step on its own; k > 0 predicts tiles from the previous "
        "step's reconstruction, with a step coded on its own every k steps (default: 16 with kind stream, 0 with learned).")
    error_bound: Optional[ErrorBound] = Field(None, description="Pointwise error bound: {abs: e} or {rel: r} (of the step's range).")
    encode_threads: int = Field(1, ge=0, le=1024, description="Threads torch may use on each producer rank for autoencoder encoding (0: torch default).")

    def keyframes(self):
        """``keyframe_every`` with its default for the codec kind."""
        return (16 if self.kind == "stream" else 0) if self.keyframe_every is None else self.keyframe_every


class AnomalyConfig(BaseModel):
    """``anomaly:`` section: flag tiles the current encoder reconstructs unusually badly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


def stream_codec_conflicts(learner, codec, anomaly):
    """Keys of a run YAML that the stream codec would ignore: set explicitly, they mean the learned codec.

    The stream codec (``codec.kind: stream``, the default) fits blend weights in staging; the tile
    settings of the learned codec (raw tiles, the learner family and its PCA/autoencoder options,
    anomaly scoring of tile residuals) have no meaning for it. Running with them set would
    silently ignore what the user asked for, so :class:`~stagelearn.staging.config.RunConfig`
    refuses them with this list.

    Parameters
    ----------
    learner : LearnerConfig
    codec : CodecConfig
    anomaly : AnomalyConfig

    Returns
    -------
    list of str
        Dotted keys (e.g. ``"learner.type autoencoder"``); empty for a learned codec or when
        nothing conflicts.
    """
    if codec.kind != "stream":
        return []
    given = learner.model_fields_set
    out = []
    out += [f"codec.{k}" for k in ("raw_fraction", "zstd_level", "encode_threads") if k in codec.model_fields_set]
    if learner.type != "pca":
        out.append(f"learner.type {learner.type}")
    out += [f"learner.{k}" for k in ("algorithm", "n_components", "forgetting_factor", "tol", "autoencoder", "replay")
            if k in given]
    if anomaly.enabled:
        out.append("anomaly.enabled")
    return out
