"""The run YAML: one pydantic model per section, composed by :class:`RunConfig`.

``load_config(path)`` reads the file with ``yaml.safe_load``, validates it (unknown keys are
errors), resolves paths relative to the YAML file, and checks that the IO names exist in the
ADIOS2 XML. Every problem raises :class:`~stagelearn.staging.errors.ConfigError` with one line
naming the file, the key path, the bad value and the fix.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from ..analytics.config import AnomalyConfig, CodecConfig, LearnerConfig
from ..sim_mocks.config import ExternalSimConfig, GrayScottConfig, GyrokineticConfig, Heat2DConfig
from .errors import ConfigError
from .xmlconfig import read_ios


def default_xml():
    """Path of the packaged ``stagelearn.xml`` (SST stream, model channel, BP5 output)."""
    return str(importlib.resources.files("stagelearn.xml_configs") / "stagelearn.xml")


class Adios2Config(BaseModel):
    """``adios2:`` section: XML file, IO names and stream layout."""

    model_config = ConfigDict(extra="forbid")

    config_file: Optional[str] = Field(None, description="ADIOS2 XML, relative to the YAML; default: packaged stagelearn.xml.")
    stream_io: str = Field("SimulationOutput", description="IO of the simulation's output stream.")
    model_io: str = Field("ModelUpdates", description="IO of the reverse stream carrying encoders.")
    output_io: str = Field("CompressedOutput", description="IO of the compressed output file written by staging.")
    layout: Literal["auto", "shared", "per_rank"] = Field(
        "auto",
        description="shared: all producer ranks are one SST writer (ADIOS2 with MPI); per_rank: one writer per rank; "
        "auto: shared when ADIOS2 has MPI.",
    )


class StagingConfig(BaseModel):
    """``staging:`` section."""

    model_config = ConfigDict(extra="forbid")

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


class MetricsConfig(BaseModel):
    """``metrics:`` section."""

    model_config = ConfigDict(extra="forbid")

    sz3_every: int = Field(
        5, ge=0, description="Producers also compress every n-th encoded step with SZ3 at the PSNR reached (0: never)."
    )


class TimeoutConfig(BaseModel):
    """``timeouts:`` section (seconds). Every blocking wait uses one of these."""

    model_config = ConfigDict(extra="forbid")

    open_s: float = Field(60.0, gt=0, description="Waiting for the other side to open a stream.")
    step_s: float = Field(120.0, gt=0, description="Waiting for one step (reader BeginStep, writer EndStep).")
    run_s: float = Field(3600.0, gt=0, description="Whole run, for `stagelearn run`.")


class RunConfig(BaseModel):
    """A whole run: simulation, staging, learner, codec, anomaly, ADIOS2, metrics, timeouts."""

    model_config = ConfigDict(extra="forbid")

    run_name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = Field("results", description="Results go to <output_dir>/<run_name>/ (relative to the cwd).")
    simulation: GrayScottConfig | Heat2DConfig | GyrokineticConfig | ExternalSimConfig = Field(
        default_factory=GrayScottConfig, discriminator="type")
    staging: StagingConfig = Field(default_factory=StagingConfig)
    adios2: Adios2Config = Field(default_factory=Adios2Config)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)

    source: Optional[str] = Field(None, exclude=True, description="YAML file this config came from (set by load_config).")

    @property
    def run_dir(self):
        return Path(self.output_dir) / self.run_name

    @model_validator(mode="after")
    def _in_transit_needs_a_stream(self):
        if self.staging.mode == "in_transit" and not self.staging.stream:
            raise ValueError("staging.mode in_transit reads the stream the simulation opens: set staging.stream "
                             "(e.g. gs.bp for a code that opens gs.bp with the SST engine)")
        if self.staging.mode == "in_transit" and self.anomaly.enabled:
            raise ValueError("anomaly detection runs on producers: it needs staging.mode in_situ")
        return self

    @model_validator(mode="after")
    def _anomaly_needs_pca(self):
        if self.anomaly.enabled and self.learner.type != "pca":
            raise ValueError("anomaly.enabled scores tiles by their PCA residual: it needs learner.type pca "
                             f"(got {self.learner.type!r}); disable anomaly or use the PCA learner")
        return self


_FIXES = {
    "extra_forbidden": "remove it or check its spelling (see `stagelearn schema`)",
    "missing": "add it",
}


def _format_error(path, err):
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("gray_scott", "heat2d", "gyrokinetic", "external")))
    fix = _FIXES.get(err["type"], "see `stagelearn schema` for the expected form")
    value = err.get("input")
    shown = "" if err["type"] == "missing" else f" (got {value!r})"
    return f"{path}: {loc or '<top>'}: {err['msg']}{shown}; {fix}"


def load_config(path):
    """Read and validate a run YAML.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    config : RunConfig
        With ``adios2.config_file`` resolved to an existing path.

    Raises
    ------
    ConfigError
        On a missing file, invalid YAML, an unknown key, a wrong type or value, or an IO name
        missing from the ADIOS2 XML.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: run configuration not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        raise ConfigError(_format_error(path, errors[0]) + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")) from None
    cfg.source = path
    base = os.path.dirname(os.path.abspath(path))
    xml = cfg.adios2.config_file
    cfg.adios2.config_file = os.path.normpath(os.path.join(base, xml)) if xml else default_xml()
    if cfg.simulation.type == "external":  # script and config files named relative to the YAML, like the XML
        cfg.simulation.command = [_resolve_file_arg(a, base, cfg.staging.stream) for a in cfg.simulation.command]
    check_ios(cfg, path)
    return cfg


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
    """Check that the configured IO names exist in the ADIOS2 XML (raises ConfigError)."""
    ios = read_ios(cfg.adios2.config_file)
    for key in ("stream_io", "model_io", "output_io"):
        name = getattr(cfg.adios2, key)
        if name not in ios:
            raise ConfigError(
                f"{source}: adios2.{key}: IO {name!r} is not defined in {cfg.adios2.config_file} "
                f"(it defines {sorted(ios)}); fix the name or add <io name=\"{name}\"> to the XML"
            )
    return ios
