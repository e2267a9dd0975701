"""The run YAML against its ADIOS2 XML: IO names present, the stream's SST queue settled.

Used by :func:`~stagelearn.staging.config.load_config` once paths are resolved; staging, producers
and :mod:`.xmlgen` apply the settled queue with :func:`sst_parameters`.
"""

from __future__ import annotations

from .config_sections import updated
from .errors import ConfigError
from .wire import SST_QUEUE_DEFAULTS
from .xmlconfig import read_ios

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
    return cfg.model_copy(update={"adios2": updated(cfg.adios2, **settled)})


def sst_parameters(cfg):
    """SST parameters of the simulation's stream settled by :func:`resolve_stream_params` (for ``IO.SetParameter``)."""
    a = cfg.adios2
    out = {"QueueLimit": a.queue_limit, "QueueFullPolicy": a.queue_full_policy, "NetworkInterface": a.network_interface}
    return {k: str(v) for k, v in out.items() if v is not None}


def check_ios(cfg, source="<config>"):
    """Check that the configured IO names exist in the ADIOS2 XML.

    Parameters
    ----------
    cfg : RunConfig
        With ``adios2.config_file`` resolved; in transit only ``adios2.stream_io`` is checked.
    source : str
        The run YAML, for messages.

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


def in_transit_output_io(cfg):
    """``cfg`` without an output IO in transit when its XML does not define one.

    In transit nothing goes back to the code (no model IO is needed) and the output IO may be
    missing from the XML (the code's own): staging then writes a plain BP5 file (``output_io`` None).

    Parameters
    ----------
    cfg : RunConfig
        With ``adios2.config_file`` resolved.

    Returns
    -------
    cfg : RunConfig
        ``cfg`` itself, or in transit with an output IO the XML does not define, a copy whose
        ``adios2.output_io`` is None.
    """
    if cfg.staging.mode != "in_transit" or cfg.adios2.output_io is None:
        return cfg
    if cfg.adios2.output_io in read_ios(cfg.adios2.config_file):
        return cfg
    return cfg.model_copy(update={"adios2": updated(cfg.adios2, output_io=None)})
