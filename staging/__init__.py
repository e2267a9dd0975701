"""Everything that touches ADIOS2: producer API, staging service, model channel, XML, launcher, CLI.

Public names
------------
Producer
    What a simulation calls to stream its blocks and receive encoders.
load_config, RunConfig
    The validated run YAML.
"""

from .config import RunConfig, load_config
from .producer import Producer

__all__ = ["Producer", "RunConfig", "load_config"]
