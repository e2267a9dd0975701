"""The run YAML: one pydantic model per section, composed by :class:`RunConfig`.

Its own sections (``adios2:``, ``staging:``, ``fallback:``, ``metrics:``, ``timeouts:``) are in
:mod:`.config_sections`, the checks against the ADIOS2 XML (IO names, the stream's SST queue) in
:mod:`.config_ios`; both are importable from here as before. ``RunConfig`` holds the checks that
span sections.

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
from typing import Optional

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from ..analytics.config import AnomalyConfig, CodecConfig, LearnerConfig, stream_codec_conflicts
from ..analytics.qoi_config import QoIConfig
from ..sim_mocks.config import (ExternalSimConfig, GrayScottConfig, GyrokineticConfig, GyrokineticTurbulenceConfig,
                                Heat2DConfig)
from . import checkpoint
from .config_errors import format_error, yaml_error_message
from .config_ios import check_ios, in_transit_output_io, resolve_stream_params, sst_parameters
from .config_sections import (FROZEN, Adios2Config, FallbackConfig, MetricsConfig, StagingConfig, TimeoutConfig,
                              updated)
from .errors import ConfigError

__all__ = ["Adios2Config", "FallbackConfig", "MetricsConfig", "RunConfig", "StagingConfig", "TimeoutConfig",
           "check_ios", "default_xml", "load_config", "resolve_stream_params", "sst_parameters"]


def default_xml():
    """Path of the packaged ``stagelearn.xml`` (SST stream, model channel, BP5 output)."""
    return str(importlib.resources.files("stagelearn.xml_configs") / "stagelearn.xml")


class RunConfig(BaseModel):
    """A whole run: simulation, staging, learner, codec, anomaly, ADIOS2, metrics, timeouts."""

    model_config = FROZEN

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
    update = {"source": path, "adios2": updated(cfg.adios2, config_file=os.path.normpath(os.path.join(base, xml))
                                                 if xml else default_xml())}
    if cfg.simulation.type == "external":  # script and config files named relative to the YAML, like the XML
        update["simulation"] = updated(cfg.simulation, command=[_resolve_file_arg(a, base, cfg.staging.stream)
                                                                for a in cfg.simulation.command])
    if cfg.staging.restart_from:
        restart = os.path.normpath(os.path.join(base, cfg.staging.restart_from))
        checkpoint.check(restart, cfg.learner, path, codec_kind=cfg.codec.kind)
        update["staging"] = updated(cfg.staging, restart_from=restart)
    cfg = cfg.model_copy(update=update)
    check_ios(cfg, path)
    return resolve_stream_params(in_transit_output_io(cfg), path)


_FILE_SUFFIXES = (".py", ".sh", ".xml", ".yaml", ".yml", ".json", ".toml", ".ini", ".cfg", ".nml")


def _resolve_file_arg(arg, base, stream):
    """An external command's argument, made absolute when it names a script or configuration file
    (by suffix) that exists next to the run YAML; anything else (the stream name, numbers, options,
    data files the code writes) is left as written: the code runs in the run directory."""
    path = os.path.join(base, arg)
    if arg != stream and arg.endswith(_FILE_SUFFIXES) and not os.path.isabs(arg) and os.path.isfile(path):
        return os.path.normpath(path)
    return arg

