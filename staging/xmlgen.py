"""``stagelearn xml``: the ADIOS2 XML a simulation needs to stream to stagelearn.

A simulation that already writes with ADIOS2 (and cannot be modified) joins stagelearn by
switching its output IO to SST in its own ``adios2.xml``. :func:`generate` writes that document
for a run YAML: the stream IO (the simulation's output, SST), the model IO (staging's push-back
channel, SST) and the output IO (staging's compressed file, BP5), each parameter commented.
:func:`expected_ios` is what the document holds; :mod:`.xmllint` checks an existing file against
it (``stagelearn xml --check``) or lints any ADIOS2 XML/YAML (``--inspect``).

Expected values come from the packaged ``xml_configs/stagelearn.xml`` (:data:`DEFAULTS`); where
the run's ``adios2.config_file`` defines the stream or model IO with engine SST, its values for
those keys win, so the simulation's file agrees with what staging itself reads.
"""

from __future__ import annotations

import textwrap
from xml.sax.saxutils import quoteattr

from .config import sst_parameters
from .errors import ConfigError
from .sst_params import SST_KEYS  # noqa: F401  (SST parameter names; also imported from here)
from .wire import SST_QUEUE_DEFAULTS
from .xmlconfig import read_ios

# Parameters stagelearn relies on, as in xml_configs/stagelearn.xml (order kept in the output); the stream's
# queue defaults are wire.SST_QUEUE_DEFAULTS (the one place they live).
DEFAULTS = {
    "stream": ("SST", {"RendezvousReaderCount": "1", **{k: str(v) for k, v in SST_QUEUE_DEFAULTS.items()},
                       "DataTransport": "WAN", "NetworkInterface": "lo"}),
    "model": ("SST", {"RendezvousReaderCount": "1", "QueueLimit": "16", "QueueFullPolicy": "Discard",
                      "DataTransport": "WAN", "NetworkInterface": "lo"}),
    "output": ("BP5", {}),
}

_ROLE_KEY = {"stream": "stream_io", "model": "model_io", "output": "output_io"}

_WHY = {
    ("stream", "RendezvousReaderCount"):
        "the simulation's Open waits for staging's reader cohort, so no step is lost before staging connects",
    ("stream", "QueueLimit"): "at most this many steps are buffered while staging is busy: memory stays bounded",
    ("stream", "QueueFullPolicy"):
        "Block: with a full queue the simulation waits in EndStep rather than dropping steps (Discard would lose them)",
    ("model", "RendezvousReaderCount"):
        "staging's publisher waits at Open for producer rank 0's reader: SST admits a late reader only inside "
        "the writer's EndStep",
    ("model", "QueueLimit"): "a few encoders in flight at most",
    ("model", "QueueFullPolicy"): "Discard: staging never blocks on the producers after the rendezvous",
    ("model", "OpenTimeoutSecs"):
        "reader side: how long a reader of this IO waits for staging's contact file (the run YAML's timeouts.open_s; "
        "stagelearn's own readers set it from there)",
}
_WHY_ANY = {
    "DataTransport": "WAN (sockets) works everywhere and must match staging's XML; RDMA/UCX need the same on both sides",
    "NetworkInterface": "ADAPT: lo (loopback) only works with both sides on one node; on a cluster set the nodes' "
                        "high-speed interface (e.g. ib0, hsn0), the same in staging's XML",
    "OpenTimeoutSecs": "reader side: seconds a reader waits for the writer's contact file",
}


def expected_ios(cfg, *, io_name=None):
    """The IOs a simulation's XML must define for ``cfg``.

    Parameters
    ----------
    cfg : RunConfig
    io_name : str, optional
        The IO name the simulation's code declares for its output (default: ``adios2.stream_io``).

    Returns
    -------
    ios : list of (role, name, engine, dict of key to value)
        ``role`` is ``"stream"``, ``"model"`` or ``"output"``; in-transit runs
        (``staging.mode: in_transit``) need the stream IO only: nothing goes back to the code.
    """
    try:
        configured = read_ios(cfg.adios2.config_file) if cfg.adios2.config_file else {}
    except ConfigError:
        configured = {}
    out = []
    for role, (engine, params) in DEFAULTS.items():
        if role != "stream" and cfg.staging.mode == "in_transit":
            continue
        cfg_name = getattr(cfg.adios2, _ROLE_KEY[role])
        name = io_name if (role == "stream" and io_name) else cfg_name
        params = dict(params)
        spec = configured.get(cfg_name)
        if engine == "SST" and spec is not None and spec.type.lower() == "sst":
            for key, value in spec.parameters.items():
                if key in SST_KEYS and key != "OpenTimeoutSecs":  # readers' timeouts come from the run YAML
                    params[key] = value
        if role == "stream" and engine == "SST":  # queue and interface as settled from the run YAML (config.py)
            params.update(sst_parameters(cfg))
        if role == "model":
            params["OpenTimeoutSecs"] = _num(cfg.timeouts.open_s)
            if cfg.adios2.network_interface:
                params["NetworkInterface"] = cfg.adios2.network_interface
        out.append((role, name, engine, params))
    return out


def _num(x):
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _comment(text, indent):
    """An XML comment wrapped to ~100 columns (``--`` is not allowed inside a comment)."""
    text = text.replace("--", "- -")
    pad = " " * indent
    lines = textwrap.wrap(text, width=100 - indent - 5)
    if len(lines) == 1:
        return f"{pad}<!-- {text} -->"
    return "\n".join([f"{pad}<!-- {lines[0]}"] + [f"{pad}     {ln}" for ln in lines[1:-1]] + [f"{pad}     {lines[-1]} -->"])


def generate(cfg, *, io_name=None):
    """A complete ADIOS2 XML document (``<adios-config>``) for a simulation streaming to stagelearn.

    Parameters
    ----------
    cfg : RunConfig
    io_name : str, optional
        The IO name the simulation's code already declares (default: ``adios2.stream_io``).

    Returns
    -------
    xml : str
    """
    ios = expected_ios(cfg, io_name=io_name)
    stream_name = ios[0][1]
    src = getattr(cfg, "source", None) or "the run YAML"
    lines = ['<?xml version="1.0"?>', "<!--"]
    head = [
        f"ADIOS2 configuration for a simulation streaming to stagelearn (generated by `stagelearn xml` from {src}).",
        "Use it as the simulation's own adios2.xml: only the engine of its output IO changes (no code change).",
        "SST parameter keys are case-sensitive: a misspelled key is silently ignored.",
        "Check an edited copy against the run YAML with the check option of `stagelearn xml` (see `stagelearn xml -h`).",
    ]
    if stream_name != cfg.adios2.stream_io:
        head.append(f"The stream IO is named {stream_name!r} (the simulation's own name): set "
                    f"`adios2.stream_io: {stream_name}` in the run YAML (it says {cfg.adios2.stream_io!r}).")
    head.append("Staging reads the same SST settings from adios2.config_file of the run YAML; keep the two in step "
                "(or point adios2.config_file at this file).")
    for h in head:
        lines += textwrap.wrap(h.replace("--", "- -"), width=98, initial_indent="  ", subsequent_indent="    ")
    lines += ["-->", "<adios-config>"]
    titles = {
        "stream": "simulation -> staging: the simulation's output, streamed over SST to the staging ranks "
                  "(switch the engine back to BP5 to write files again)",
        "model": "staging -> simulation: encoders pushed back by staging (read on the simulation side)",
        "output": "staging -> disk: compressed output, encoders and per-step metrics (written by staging)",
    }
    for role, name, engine, params in ios:
        lines.append("")
        lines.append(_comment(titles[role], 2))
        lines.append(f"  <io name={quoteattr(name)}>")
        if not params:
            lines.append(f"    <engine type={quoteattr(engine)}/>")
        else:
            lines.append(f"    <engine type={quoteattr(engine)}>")
            for key, value in params.items():
                why = _WHY.get((role, key)) or _WHY_ANY.get(key)
                if why:
                    lines.append(_comment(f"{key}: {why}", 6))
                lines.append(f"      <parameter key={quoteattr(key)} value={quoteattr(str(value))}/>")
            lines.append("    </engine>")
        lines.append("  </io>")
    lines.append("</adios-config>")
    return "\n".join(lines) + "\n"
