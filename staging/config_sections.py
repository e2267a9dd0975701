"""The run YAML's own sections: ``adios2:``, ``staging:``, ``fallback:``, ``metrics:``, ``timeouts:``.

One frozen pydantic model per section (unknown keys are errors), composed with the analytics and
simulation sections by :class:`~stagelearn.staging.config.RunConfig`. A loaded section is a value:
:func:`updated` derives a changed copy.
"""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

#: Model configuration of every section: unknown keys are errors, a loaded section is a value.
FROZEN = ConfigDict(extra="forbid", frozen=True)


def updated(model, **values):
    """A copy of the frozen ``model`` with ``values`` (already valid) in place of its own.

    Parameters
    ----------
    model : pydantic.BaseModel
    **values
        Field names and their new values (not validated again).

    Returns
    -------
    model : pydantic.BaseModel
        Of the same class as ``model``.
    """
    return model.model_copy(update=values)


class Adios2Config(BaseModel):
    """``adios2:`` section: XML file, IO names and stream layout."""

    model_config = FROZEN

    config_file: Optional[str] = Field(None, description="ADIOS2 XML, relative to the YAML; default: packaged stagelearn.xml.")
    stream_io: str = Field("SimulationOutput", description="IO of the simulation's output stream.")
    model_io: str = Field("ModelUpdates", description="IO of the reverse stream carrying encoders.")
    output_io: Optional[str] = Field("CompressedOutput", description="IO of the compressed output file written by "
                                     "staging. In transit, when adios2.config_file (e.g. the code's own XML) does not "
                                     "define it, staging writes a plain BP5 file (the value becomes null).")
    layout: Literal["auto", "shared", "per_rank"] = Field(
        "auto",
        description="shared: all producer ranks are one SST writer (ADIOS2 with MPI); per_rank: one writer per rank; "
        "auto: shared when ADIOS2 has MPI.",
    )
    queue_limit: Optional[int] = Field(
        None, ge=1, le=10_000, description="SST QueueLimit of the simulation's stream: steps a producer holds for "
        "staging before the policy applies. Default: the XML's value, else 4 (never unbounded).")
    queue_full_policy: Optional[Literal["Block", "Discard"]] = Field(
        None, description="SST QueueFullPolicy when the queue is full: Block (the simulation waits; stalls are counted) "
        "or Discard (the newest step is dropped and recorded in the ledger). Default: the XML's value, else Block.")
    allow_discard: bool = Field(
        False, description="In transit: accept QueueFullPolicy=Discard in the simulation's own XML (its writer then "
        "drops steps while staging is busy: they are lost). Without it, validate and run refuse such an XML.")
    network_interface: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]+$", description="SST NetworkInterface of the stream and model channel "
        "(e.g. lo for one node, ib0 or hsn0 across nodes). Default: the XML's value, else lo (loopback).")


class StagingConfig(BaseModel):
    """``staging:`` section."""

    model_config = FROZEN

    ranks: int = Field(2, ge=1, description="Staging MPI ranks (N).")
    variables: Optional[List[str]] = Field(None, description="Variables to learn; default: all found on the stream.")
    tile_shape: Optional[Tuple[PositiveInt, ...]] = Field(
        None, description="Tile shape; default 4x4x4 for 3D fields, 8x8 for 2D (64 features either way)."
    )
    mode: Literal["in_situ", "in_transit"] = Field(
        "in_situ", description="in_situ: producers use stagelearn's Producer and encode with pushed encoders; "
        "in_transit: an unchanged ADIOS2 code streams raw arrays and staging encodes them.")
    stream: Optional[str] = Field(
        None, description="in_transit: the stream name the simulation opens (its SST contact file is <stream>.sst), "
        "relative to the run directory.")
    checkpoint_every: int = Field(
        10, ge=0, description="Write the learner checkpoint (model, encoder version, step) every n steps; it is also "
        "written at the end and when a producer is lost. 0: only then.")
    restart_from: Optional[str] = Field(
        None, description="Checkpoint directory of an earlier run (<run>/checkpoint) to start the learner from; the "
        "first encoder is published at once and version numbers continue. Relative to the YAML.")


class FallbackConfig(BaseModel):
    """``fallback:`` section: where producers write when staging is gone."""

    model_config = FROZEN

    dir: Optional[str] = Field(None, description="Directory for the per-rank fallback BP5 files (node-local disk on a "
                               "cluster); default <run_dir>/fallback.")
    encode: bool = Field(True, description="Encode fallback steps with the last encoder (else, or before any "
                         "encoder, raw float32).")


class MetricsConfig(BaseModel):
    """``metrics:`` section."""

    model_config = FROZEN

    sz3_every: int = Field(
        5, ge=0, description="Producers also compress every n-th encoded step with SZ3 at the PSNR reached (0: never)."
    )


class TimeoutConfig(BaseModel):
    """``timeouts:`` section (seconds). Every blocking wait uses one of these."""

    model_config = FROZEN

    open_s: float = Field(60.0, gt=0, description="Waiting for the other side to open a stream.")
    step_s: float = Field(120.0, gt=0, description="Waiting for one step (reader BeginStep, writer EndStep).")
    run_s: float = Field(3600.0, gt=0, description="Whole run, for `stagelearn run`.")
    peer_s: float = Field(30.0, gt=0, description="Producers declare staging lost when it acknowledged nothing for "
                          "this long while their queue is full (a dead staging is seen at once).")

