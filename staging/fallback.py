"""Producers' fallback files: where a producer rank writes its steps once staging is gone.

One serial BP5 file per producer rank (``<dir>/producer.p<rank>.bp``, node-local disk on a
cluster), in the format of staging's ``compressed.bp`` (:mod:`.output`): per step the rank's block of
each field as a payload (coded with the last encoder, stored once in the file, or lossless raw) and
its report row. ``stagelearn decode`` reads such a file (the rank's blocks only).
"""

from __future__ import annotations

import logging
import os

from .block import ReceivedBlock
from .output_writer import CompressedOutputWriter

logger = logging.getLogger(__name__)


def fallback_path(directory, rank):
    """The fallback file of producer ``rank`` in ``directory``: ``<directory>/producer.p<rank>.bp``."""
    return os.path.join(directory, f"producer.p{int(rank)}.bp")


class FallbackSink:
    """Per-rank BP5 file of steps staging did not take (opened on first use).

    Parameters
    ----------
    directory : str
        Created if missing.
    rank : int
        Producer rank (file name and block id).
    """

    def __init__(self, directory, rank):
        self.directory, self.rank = str(directory), int(rank)
        self.path = fallback_path(self.directory, self.rank)
        self._writer = None
        self._stored_versions = set()
        self.steps = 0

    @property
    def file(self):
        """:attr:`path` once the file holds a step, else None."""
        return self.path if self.steps else None

    def write_step(self, step, blocks, encoder=None):
        """Write one step.

        Parameters
        ----------
        step : int
        blocks : list of dict
            One per field: ``var``, ``report`` (ndarray), ``raw`` (float32 block) or ``payload``
            (bytes), and ``shape``, ``start``, ``count``.
        encoder : Encoder or None
            The encoder of coded payloads (stored in the file the first time it is used).
        """
        if self._writer is None:
            os.makedirs(self.directory, exist_ok=True)
            self._writer = CompressedOutputWriter(None, None, self.path)
            logger.warning("producer rank %d writes its steps to the fallback file %s", self.rank, self.path)
        new = encoder if encoder is not None and encoder.version not in self._stored_versions else None
        if new is not None:
            self._stored_versions.add(new.version)
        received = [ReceivedBlock(var=b["var"], rank=self.rank, report=b["report"], raw=b.get("raw"), payload=b.get("payload"),
                                  shape=tuple(b["shape"]), start=tuple(b["start"]), count=tuple(b["count"]),
                                  qoi=b.get("qoi")) for b in blocks]
        self._writer.write_step(step, received, encoder=new)
        self.steps += 1

    def close(self):
        """Close the file (if it was opened); a step written later would start a new file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
