"""The step/block index of a compressed output file (layout: :mod:`.output_format`).

:class:`OutputIndex` opens a file written by
:class:`~stagelearn.staging.output_writer.CompressedOutputWriter` (staging's ``compressed.bp``) or a
producer's fallback file for random access (``ReadRandomAccess``) and reads its items as stored:
the producer steps, the fields, which steps hold a field, single blocks and global arrays at a
step, the stored encoders, the report rows, the per-step summary items and the code's attributes.
ADIOS2 random access counts, for each variable, only the steps where it exists: the index maps
producer steps to those counts. Decoding is :class:`~stagelearn.staging.output_reader.CompressedOutputReader`'s.
"""

from __future__ import annotations

import numpy as np

from ..analytics.encoder import Encoder, spec_from_bytes
from .adios import bindings
from .code_attributes import read_attributes
from .errors import StagelearnError, UsageError
from .output_format import CODE_ATTR_PREFIX, STEP_VAR, encoder_prefix, summary_name, summary_step_name
from .wire import REPORT_FIELDS, report_name, report_row


class OutputIndex:
    """Random access to the items of a compressed output file: steps, fields, blocks, encoders, reports.

    Parameters
    ----------
    path : str
        The ``.bp`` directory written by :class:`CompressedOutputWriter`.

    Raises
    ------
    StagelearnError
        If the file cannot be opened or is not a stagelearn output.
    """

    def __init__(self, path):
        b = bindings()
        self.adios = b.ADIOS()
        self.io = self.adios.DeclareIO("stagelearn-decode")
        self.io.SetEngine("BP5")
        try:
            self.engine = self.io.Open(str(path), b.Mode.ReadRandomAccess)
        except Exception as exc:  # ADIOS2 raises plain runtime errors here
            raise StagelearnError(f"{path}: cannot open as an ADIOS2 BP file ({exc})") from None
        self.path = str(path)
        self.variables = self.io.AvailableVariables()
        self._encoders, self._reports, self._field_steps = {}, {}, {}
        if not self.variables:  # staging stored no step (the code died before its first, or never came)
            self.steps = []
            return
        if STEP_VAR not in self.variables:
            raise StagelearnError(f"{path}: no '{STEP_VAR}' variable; not a stagelearn compressed output")
        var = self.io.InquireVariable(STEP_VAR)
        n = int(var.Steps())
        var.SetStepSelection([0, n])
        steps = np.empty(n, dtype=np.int64)
        self.engine.Get(var, steps, b.Mode.Sync)
        self.steps = [int(s) for s in steps]

    def fields(self):
        """Field variable names in the file."""
        return sorted(n[: -len("/report")] for n in self.variables if n.endswith("/report") and "/" not in n[: -len("/report")])

    def _bp_step(self, step):
        try:
            return self.steps.index(int(step))
        except ValueError:
            held = f"steps {self.steps[0]}..{self.steps[-1]}" if self.steps else "no steps: staging stored none"
            raise UsageError(f"{self.path}: step {step} not in the file ({held})") from None

    def field_steps(self, var):
        """The steps of the file holding blocks of ``var`` (all steps in files written before staging
        stored the per-step block counts ``summary/blocks/<var>``)."""
        if var not in self._field_steps:
            counts = self.summary(f"blocks/{var}")
            self._field_steps[var] = [s for s in self.steps if s in counts and int(counts[s][0]) > 0] if counts \
                else list(self.steps)
        return self._field_steps[var]

    def _var_step(self, step, var):
        """Index of ``step`` among the steps that hold ``var`` (ADIOS2 random access counts only those)."""
        self._bp_step(step)
        try:
            return self.field_steps(var).index(int(step))
        except ValueError:
            raise StagelearnError(f"{self.path}: step {step} has no data for {var} (the writer did not put it "
                                  "in that step; staging_summary.json lists it under steps_without_data)") from None

    def _select_step(self, var, name, bp_step):
        # Random-access SetStepSelection counts only the steps where the variable exists:
        # payloads and reports exist in every step, each encoder array in exactly one.
        var.SetStepSelection([0 if name.startswith("encoder/") else bp_step, 1])

    def _get_global(self, name, bp_step):
        b = bindings()
        var = self.io.InquireVariable(name)
        shape = [int(x) for x in var.Shape()]
        self._select_step(var, name, bp_step)
        var.SetSelection([[0] * len(shape), shape])
        out = np.empty(shape, dtype=np.float32 if var.Type() == "float" else np.uint8)
        self.engine.Get(var, out, b.Mode.Sync)
        return out

    def encoder(self, version):
        """The :class:`Encoder` of ``version`` stored in the file (validated)."""
        version = int(version)
        if version not in self._encoders:
            prefix = encoder_prefix(version)
            spec_name = f"{prefix}/spec"
            if spec_name not in self.variables:
                raise StagelearnError(f"{self.path}: encoder version {version} is not stored in the file")
            spec = spec_from_bytes(self._get_global(spec_name, 0))
            arrays = {n[len(prefix) + 1:]: self._get_global(n, 0)
                      for n in self.variables if n.startswith(prefix + "/") and n != spec_name}
            self._encoders[version] = Encoder.from_arrays(spec, arrays)
        return self._encoders[version]

    def reports(self, step, var):
        """Report rows of ``var`` at ``step``: ndarray of shape (n_blocks, len(REPORT_FIELDS))."""
        key = (int(step), var)
        if key not in self._reports:
            self._reports[key] = self._read_reports(step, var)
        return self._reports[key]

    def _read_reports(self, step, var):
        t = self._var_step(step, var)
        rows = [report_row(self._get_block(report_name(var), t, int(bi["BlockID"]), np.float64))
                for bi in self.engine.BlocksInfo(report_name(var), t)]  # rows of older files: new fields 0
        return np.array(rows).reshape(-1, len(REPORT_FIELDS))

    def _get_block(self, name, bp_step, i, dtype):
        """Block ``i`` of the local array ``name`` at file step ``bp_step`` (1-D ndarray of ``dtype``)."""
        var = self.io.InquireVariable(name)
        self._select_step(var, name, bp_step)
        var.SetBlockSelection(int(i))
        out = np.empty(int(var.SelectionSize()), dtype=dtype)
        self.engine.Get(var, out, bindings().Mode.Sync)
        return out

    def summary(self, name):
        """The per-step summary item ``name``: dict of producer step to 1-D ndarray (empty if never written)."""
        b = bindings()
        values_name = summary_name(name)
        if values_name not in self.variables:
            return {}
        steps, values = self.io.InquireVariable(summary_step_name(name)), self.io.InquireVariable(values_name)
        dtype = {"double": np.float64, "float": np.float32}.get(values.Type(), np.int64)
        out = {}
        for k in range(int(steps.Steps())):  # random access counts the steps where the item exists
            step = np.empty(1, dtype=np.int64)
            steps.SetStepSelection([k, 1])
            self.engine.Get(steps, step, b.Mode.Sync)
            n = int(self.engine.BlocksInfo(values_name, k)[0]["Count"])
            values.SetStepSelection([k, 1])
            values.SetSelection([[0], [n]])
            out[int(step[0])] = np.empty(n, dtype=dtype)
            self.engine.Get(values, out[int(step[0])], b.Mode.Sync)
        return out

    def attributes(self):
        """The code's own ADIOS2 stream attributes carried into the file in transit (``code/<name>``).

        Returns
        -------
        dict of str to value
            The code's names (``title``, ``T/unit``) -> ``str``, ``list of str``, a numpy scalar or
            a 1-D ndarray, as of the last step that carried them (see :mod:`.code_attributes`);
            empty for files of runs in situ or whose code defines none.
        """
        return read_attributes(self.io, CODE_ATTR_PREFIX)

    def close(self):
        """Close the file."""
        self.engine.Close()
