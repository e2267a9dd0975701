"""The compressed output file (BP5) written by staging: its layout and variable names.

Per output step the file holds ``step`` (int64, written by staging rank 0) and, for each field
``X``, one block per producer block in ``X/payload`` (uint8 local arrays: transform-coded payloads,
or lossless ``kind: raw`` payloads for steps sent before any encoder), ``X/report`` (float64 local
arrays, same order) and ``X/anomaly`` (the block's anomaly map, ``[n, (tile, score, flagged,
persistent) * n]``; flagged tiles are raw, hence exact, in the payload). The three are written
together for every block, so block ``i`` of step ``t`` is addressed directly in all three.

Staging writes the file collectively (:class:`~stagelearn.staging.output_writer.CompressedOutputWriter`):
every staging rank puts its own blocks, so blocks are ordered by staging (ADIOS2 writer) rank and,
within a rank, by producer rank. Readers map block ``i`` to its producer through the ``rank``
column of its report row, never through the block order.

Each encoder version ``k`` is stored once, in the step it was published, as
``encoder/v<k>/spec`` (uint8 JSON) and its named arrays ``encoder/v<k>/<X>/mean_``,
``encoder/v<k>/<X>/components_`` (PCA) or ``encoder/v<k>/<X>/ae/<parameter>`` (autoencoder),
float32. Optional per-step summaries are ``summary/<name>`` (1-D global arrays, rank 0) with
their producer step in ``summary/<name>/step``. The
attribute ``stagelearn/report_fields`` names the report columns. In transit, the ADIOS2 attributes
of the code's stream (global ones such as ``title`` and variable ones such as ``T/unit``) are
attributes ``code/<name>`` (``code/title``, ``code/T/unit``), with their ADIOS2 type, as of the
last step that carried them (:mod:`.code_attributes`). Any ADIOS2 tool (``bpls -a``) can list the
file.
"""

from __future__ import annotations

#: The per-step producer step number (int64 global array of shape (1,)).
STEP_VAR = "step"

#: Attribute naming the columns of ``X/report``.
REPORT_FIELDS_ATTR = "stagelearn/report_fields"

#: Prefix of the code's own stream attributes carried into the file (in transit).
CODE_ATTR_PREFIX = "code/"


def code_attribute_name(name):
    """Attribute of the file holding the code's stream attribute ``name``: ``code/<name>``.

    The prefix keeps the code's names apart from stagelearn's own (``stagelearn/...``).
    """
    return CODE_ATTR_PREFIX + name


def encoder_prefix(version):
    """Variable prefix of encoder ``version``: ``encoder/v<version>``."""
    return f"encoder/v{int(version)}"


def summary_name(name):
    """Variable of the per-step summary item ``name``: ``summary/<name>``."""
    return f"summary/{name}"


def summary_step_name(name):
    """Producer step of each value of summary item ``name`` (int64, shape (1,)): ``summary/<name>/step``.

    ADIOS2's random access counts only the steps where a variable exists, so an item written in
    some steps only carries its steps alongside.
    """
    return f"summary/{name}/step"
