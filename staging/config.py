"""The run YAML: one pydantic model per section, composed by :class:`RunConfig`.

``load_config(path)`` reads the file with ``yaml.safe_load``, validates it (unknown keys are
errors), resolves paths relative to the YAML file, and checks that the IO names exist in the
ADIOS2 XML. Problems raise :class:`~stagelearn.staging.errors.ConfigError`, listing every one
found at that stage, each naming the file, the key path, the bad value and the fix.

The models are frozen: a loaded configuration is a value. Derive a changed one with
``cfg.model_copy(update={...})`` (as :func:`load_config` does for resolved paths).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationError, model_validator

from ..analytics.config import AnomalyConfig, CodecConfig, LearnerConfig, stream_codec_conflicts
from ..analytics.qoi_config import QoIConfig
from ..sim_mocks.config import (ExternalSimConfig, GrayScottConfig, GyrokineticConfig, GyrokineticTurbulenceConfig,
                                Heat2DConfig)
from . import checkpoint
from .config_errors import format_error, yaml_error_message
from .errors import ConfigError
from .wire import SST_QUEUE_DEFAULTS
from .xmlconfig import read_ios

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def default_xml():
    """Path of the packaged ``stagelearn.xml`` (SST stream, model channel, BP5 output)."""
    return str(importlib.resources.files("stagelearn.xml_configs") / "stagelearn.xml")


class Adios2Config(BaseModel):
    """``adios2:`` section: XML file, IO names and stream layout."""

    model_config = _FROZEN

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

    model_config = _FROZEN

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

    model_config = _FROZEN

    dir: Optional[str] = Field(None, description="Directory for the per-rank fallback BP5 files (node-local disk on a "
                               "cluster); default <run_dir>/fallback.")
    encode: bool = Field(True, description="Encode fallback steps with the last encoder (else, or before any "
                         "encoder, raw float32).")


class MetricsConfig(BaseModel):
    """``metrics:`` section."""

    model_config = _FROZEN

    sz3_every: int = Field(
        5, ge=0, description="Producers also compress every n-th encoded step with SZ3 at the PSNR reached (0: never)."
    )


class TimeoutConfig(BaseModel):
    """``timeouts:`` section (seconds). Every blocking wait uses one of these."""

    model_config = _FROZEN

    open_s: float = Field(60.0, gt=0, description="Waiting for the other side to open a stream.")
    step_s: float = Field(120.0, gt=0, description="Waiting for one step (reader BeginStep, writer EndStep).")
    run_s: float = Field(3600.0, gt=0, description="Whole run, for `stagelearn run`.")
    peer_s: float = Field(30.0, gt=0, description="Producers declare staging lost when it acknowledged nothing for "
                          "this long while their queue is full (a dead staging is seen at once).")


class RunConfig(BaseModel):
    """A whole run: simulation, staging, learner, codec, anomaly, ADIOS2, metrics, timeouts."""

    model_config = _FROZEN

    run_name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = Field("results", description="Results go to <output_dir>/<run_name>/ (relative to the cwd).")
    simulation: GrayScottConfig | Heat2DConfig | GyrokineticConfig | GyrokineticTurbulenceConfig | ExternalSimConfig = Field(
        default_factory=GrayScottConfig, discriminator="type")
    staging: StagingConfig = Field(default_factory=StagingConfig)
    adios2: Adios2Config = Field(default_factory=Adios2Config)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    qoi: Optional[QoIConfig] = Field(None, description="Velocity moments preserved within tolerance at every point "
                                     "(analytics/qoi_config.py, docs/gyrokinetic.md).")

    source: Optional[str] = Field(None, exclude=True, description="YAML file this config came from (set by load_config).")
    _simulation_given: bool = PrivateAttr(False)

    @property
    def run_dir(self):
        return Path(self.output_dir) / self.run_name

    @property
    def simulation_given(self):
        """True when the YAML has a ``simulation:`` section; without one the simulation is the user's own
        code through :class:`~stagelearn.staging.producer.Producer` (``run``/``sim`` would run the default mock)."""
        return self._simulation_given

    @model_validator(mode="wrap")
    @classmethod
    def _note_simulation_section(cls, data, handler):
        cfg = handler(data)
        if isinstance(data, dict):
            cfg._simulation_given = "simulation" in data
        return cfg

    @model_validator(mode="after")
    def _tiles_fit_the_simulation(self):
        ndim, tile = self.simulation.field_ndim, self.staging.tile_shape
        if "simulation" in self.model_fields_set and ndim is not None and tile is not None and len(tile) != ndim:
            raise ValueError(f"staging.tile_shape {list(tile)} has {len(tile)} dimensions but the {self.simulation.type} "
                             f"simulation's fields have {ndim}: give {ndim} sizes (e.g. {[8, 8] if ndim == 2 else [4] * ndim}) "
                             "or leave tile_shape out for the default")
        return self

    @model_validator(mode="after")
    def _in_transit_needs_a_stream(self):
        if self.staging.mode == "in_transit" and not self.staging.stream:
            raise ValueError("staging.mode in_transit reads the stream the simulation opens: set staging.stream "
                             "(e.g. gs.bp for a code that opens gs.bp with the SST engine)")
        if self.staging.mode == "in_transit" and self.anomaly.enabled:
            raise ValueError("anomaly detection runs on producers: it needs staging.mode in_situ")
        return self

    @model_validator(mode="after")
    def _qoi_fits_the_simulation(self):
        """``qoi`` against the simulation: its velocity grid sizes the weight vectors; named moments need the grid."""
        q, sim = self.qoi, self.simulation
        if q is None:
            return self
        if self.codec.kind == "stream" and q.raw_fraction > 0:
            raise ValueError(f"qoi.raw_fraction {q.raw_fraction:g} sends raw tiles of {q.variable!r} with the learned "
                             "codec; codec.kind stream has no tiles: remove qoi.raw_fraction or set codec.kind: learned")
        if self.staging.variables is not None and q.variable not in self.staging.variables:
            raise ValueError(f"qoi.variable {q.variable!r} is not in staging.variables {self.staging.variables}: add it "
                             "or name one of them")
        grid = (sim.n_vpar, sim.n_mu) if hasattr(sim, "n_vpar") else None
        if grid is not None and q.velocity_shape is not None and tuple(q.velocity_shape) != grid:
            raise ValueError(f"qoi.velocity_shape {list(q.velocity_shape)} differs from the simulation's n_vpar x n_mu "
                             f"{list(grid)}: remove it (it is taken from the simulation) or fix it")
        if grid is not None:
            q.check_weights(grid, where="simulation.n_vpar x n_mu")
            return self
        named = [m.name for m in q.moments if m.weights is None]
        if named:
            raise ValueError(f"qoi.moments {named} are named gyrokinetic moments: they need the velocity grid and B of a "
                             f"gyrokinetic simulation section (the {sim.type} simulation has none); give their weights")
        if q.velocity_shape is None:
            raise ValueError("qoi.velocity_shape is required to check the length of qoi.moments weights when the "
                             f"simulation ({sim.type}) has no velocity grid: set it to [n_vpar, n_mu]")
        return self

    @model_validator(mode="after")
    def _codec_uses_its_settings(self):
        if self.codec.kind == "learned" and "entropy" in self.codec.model_fields_set:
            raise ValueError("codec.entropy chooses the stream codec's entropy coder; codec.kind learned codes tiles "
                             "with its own range coder: remove codec.entropy or set codec.kind: stream")
        ignored = stream_codec_conflicts(self.learner, self.codec, self.anomaly)
        if ignored:
            raise ValueError(f"{', '.join(ignored)} set the learned tile codec, but codec.kind is stream (the default: "
                             "interpolation + temporal prediction, which has no tiles and learns no PCA or "
                             "autoencoder): set codec.kind: learned to use them, or remove them")
        if self.anomaly.enabled and self.learner.type != "pca":
            raise ValueError("anomaly.enabled scores tiles by their PCA residual: it needs learner.type pca "
                             f"(got {self.learner.type!r}); disable anomaly or use the PCA learner")
        return self


def load_config(path):
    """Read and validate a run YAML.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    config : RunConfig
        Frozen; ``source`` is ``path``, ``adios2.config_file`` is resolved to an existing path and
        the stream's SST queue settings are settled (:func:`resolve_stream_params`).

    Raises
    ------
    ConfigError
        On a missing file, invalid YAML, an unknown key, a wrong type or value, or an IO name
        missing from the ADIOS2 XML. Every validation error of the file is listed (``problems``),
        each naming the file and the key.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: run configuration not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, exc)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    # a section left empty (`adios2:` with its keys commented out) means its defaults
    data = {k: v for k, v in data.items() if not (v is None and k in RunConfig.model_fields and k != "source")}
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_problems([format_error(path, err, RunConfig) for err in exc.errors()], path) from None
    base = os.path.dirname(os.path.abspath(path))
    xml = cfg.adios2.config_file
    update = {"source": path, "adios2": _updated(cfg.adios2, config_file=os.path.normpath(os.path.join(base, xml))
                                                  if xml else default_xml())}
    if cfg.simulation.type == "external":  # script and config files named relative to the YAML, like the XML
        update["simulation"] = _updated(cfg.simulation, command=[_resolve_file_arg(a, base, cfg.staging.stream)
                                                                 for a in cfg.simulation.command])
    if cfg.staging.restart_from:
        restart = os.path.normpath(os.path.join(base, cfg.staging.restart_from))
        checkpoint.check(restart, cfg.learner, path, codec_kind=cfg.codec.kind)
        update["staging"] = _updated(cfg.staging, restart_from=restart)
    cfg = cfg.model_copy(update=update)
    check_ios(cfg, path)
    return resolve_stream_params(_in_transit_output_io(cfg), path)


def _updated(model, **values):
    """A copy of the frozen ``model`` with ``values`` (already valid) in place of its own."""
    return model.model_copy(update=values)


_QUEUE_KEYS = (("queue_limit", "QueueLimit"), ("queue_full_policy", "QueueFullPolicy"),
               ("network_interface", "NetworkInterface"))
_DEFAULTS = {"queue_limit": SST_QUEUE_DEFAULTS["QueueLimit"], "queue_full_policy": SST_QUEUE_DEFAULTS["QueueFullPolicy"],
             "network_interface": "lo"}


def resolve_stream_params(cfg, source="<config>"):
    """Settle the stream's SST queue settings from the YAML and the XML (one value per key, never unbounded).

    A key set in both with different values is an error (say it in one place); unset in both, the
    queue is :data:`~stagelearn.staging.wire.SST_QUEUE_DEFAULTS` (4 steps, ``Block``) on the loopback
    interface. Staging and producers apply the result with ``IO.SetParameter``. (In transit the
    simulation's own writer reads only its own XML: ``stagelearn xml --check`` warns when that
    leaves its queue unbounded.)

    Parameters
    ----------
    cfg : RunConfig
        With ``adios2.config_file`` resolved.
    source : str
        The run YAML, for messages.

    Returns
    -------
    cfg : RunConfig
        ``cfg`` itself when the stream IO is not SST, else a copy whose ``adios2`` section holds
        the settled ``queue_limit``, ``queue_full_policy`` and ``network_interface``.

    Raises
    ------
    ConfigError
        Listing every conflicting or invalid key.
    """
    ios = read_ios(cfg.adios2.config_file)
    io = ios.get(cfg.adios2.stream_io)
    if io is None or io.type.lower() != "sst":
        return cfg
    xml = cfg.adios2.config_file
    settled, problems = {}, []
    for key, sst_key in _QUEUE_KEYS:
        mine, theirs = getattr(cfg.adios2, key), io.parameters.get(sst_key)
        if theirs is not None and key == "queue_limit":
            try:
                theirs = int(theirs)
            except ValueError:
                problems.append(f"{xml}: IO {cfg.adios2.stream_io}: QueueLimit={io.parameters[sst_key]!r} is not an "
                                "integer; use e.g. 4")
                continue
            if theirs <= 0:
                problems.append(f"{xml}: IO {cfg.adios2.stream_io}: QueueLimit={theirs} means an unbounded queue (the "
                                "writer's memory grows while staging is slow); set 4, or remove it and set "
                                f"adios2.queue_limit in {source}")
                continue
        if theirs is not None and key == "queue_full_policy":
            canonical = {"block": "Block", "discard": "Discard"}.get(theirs.lower())  # SST reads the value in any case
            if canonical is None:
                problems.append(f"{xml}: IO {cfg.adios2.stream_io}: QueueFullPolicy={theirs!r}; SST accepts Block or "
                                "Discard")
                continue
            theirs = canonical
        if mine is not None and theirs is not None and str(mine) != str(theirs):
            problems.append(f"{source}: adios2.{key}: {mine!r} differs from {sst_key}={theirs!r} in IO "
                            f"{cfg.adios2.stream_io} of {xml}; set it in one place")
        elif mine is None:
            settled[key] = theirs if theirs is not None else _DEFAULTS.get(key)
    if problems:
        raise ConfigError.from_problems(problems, source)
    return cfg.model_copy(update={"adios2": _updated(cfg.adios2, **settled)})


def sst_parameters(cfg):
    """SST parameters of the simulation's stream settled by :func:`resolve_stream_params` (for ``IO.SetParameter``)."""
    a = cfg.adios2
    out = {"QueueLimit": a.queue_limit, "QueueFullPolicy": a.queue_full_policy, "NetworkInterface": a.network_interface}
    return {k: str(v) for k, v in out.items() if v is not None}


_FILE_SUFFIXES = (".py", ".sh", ".xml", ".yaml", ".yml", ".json", ".toml", ".ini", ".cfg", ".nml")


def _resolve_file_arg(arg, base, stream):
    """An external command's argument, made absolute when it names a script or configuration file
    (by suffix) that exists next to the run YAML; anything else (the stream name, numbers, options,
    data files the code writes) is left as written: the code runs in the run directory."""
    path = os.path.join(base, arg)
    if arg != stream and arg.endswith(_FILE_SUFFIXES) and not os.path.isabs(arg) and os.path.isfile(path):
        return os.path.normpath(path)
    return arg


def check_ios(cfg, source="<config>"):
    """Check that the configured IO names exist in the ADIOS2 XML.

    Returns
    -------
    ios : dict of str to EngineSpec
        The XML's IOs (:func:`~stagelearn.staging.xmlconfig.read_ios`).

    Raises
    ------
    ConfigError
        Naming every IO missing from the XML.
    """
    ios = read_ios(cfg.adios2.config_file)
    keys = ("stream_io",) if cfg.staging.mode == "in_transit" else ("stream_io", "model_io", "output_io")
    problems = [f"{source}: adios2.{key}: IO {name!r} is not defined in {cfg.adios2.config_file} "
                f"(it defines {sorted(ios)}); fix the name or add <io name=\"{name}\"> to the XML"
                for key, name in ((k, getattr(cfg.adios2, k)) for k in keys)
                if name not in ios]
    if problems:
        raise ConfigError.from_problems(problems, source)
    return ios


def _in_transit_output_io(cfg):
    """In transit nothing goes back to the code (no model IO is needed) and the output IO may be
    missing from the XML (the code's own): staging then writes a plain BP5 file (``output_io`` None)."""
    if cfg.staging.mode != "in_transit" or cfg.adios2.output_io is None:
        return cfg
    if cfg.adios2.output_io in read_ios(cfg.adios2.config_file):
        return cfg
    return cfg.model_copy(update={"adios2": _updated(cfg.adios2, output_io=None)})
