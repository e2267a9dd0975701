"""The compressed output file written by staging: one import point for its writer and reader.

- :mod:`.output_format`: the file's layout and variable names;
- :mod:`.output_writer`: :class:`CompressedOutputWriter`, collective over the staging ranks;
- :mod:`.output_reader`: :class:`CompressedOutputReader`, random access and decoding
  (``stagelearn decode``).
"""

from __future__ import annotations

from .output_format import encoder_prefix
from .output_reader import CompressedOutputReader
from .output_writer import CompressedOutputWriter, write_field_bp

__all__ = ["CompressedOutputReader", "CompressedOutputWriter", "encoder_prefix", "write_field_bp"]
