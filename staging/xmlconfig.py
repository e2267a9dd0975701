"""Read the IOs of an ADIOS2 XML file (engine type and parameters) for validation.

ADIOS2 itself parses the file at run time; this reader only lets ``stagelearn validate`` and the
CLI report a missing IO or a malformed file with the file name and line before any process
starts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class EngineSpec:
    """Engine of one IO: ``type`` (e.g. ``"SST"``, ``"BP5"``) and its parameters."""

    type: str = "BP5"
    parameters: dict = field(default_factory=dict)


def read_ios(path):
    """Map each ``<io name=...>`` of an ADIOS2 XML file to its :class:`EngineSpec`.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    ios : dict of str to EngineSpec

    Raises
    ------
    ConfigError
        If the file is missing or is not well-formed XML (with line and column).
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ConfigError(f"{path}: ADIOS2 XML file not found") from None
    except ET.ParseError as exc:
        line, col = exc.position
        raise ConfigError(f"{path}:{line}:{col}: malformed ADIOS2 XML ({exc.msg})") from None
    ios = {}
    for io in root.iter("io"):
        name = io.get("name")
        if not name:
            raise ConfigError(f"{path}: an <io> element has no name attribute")
        spec = EngineSpec()
        eng = io.find("engine")
        if eng is not None:
            spec.type = eng.get("type", "BP5")
            for p in eng.findall("parameter"):
                spec.parameters.setdefault(p.get("key"), p.get("value"))
        ios[name] = spec
    return ios
