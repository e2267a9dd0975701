"""``stagelearn xml --check`` and ``--inspect``: findings on an existing ADIOS2 XML or YAML file.

:func:`check` compares a file against what :func:`stagelearn.staging.xmlgen.generate` writes for a
run YAML and returns :class:`Finding` objects; :func:`inspect` needs no run YAML: it summarises any
ADIOS2 XML/YAML per IO and flags mistakes. Both agree with ADIOS2 2.12.1 on what loads: what it
refuses (two engines in an IO, an ``<operation>`` with both ``operator=`` and ``type=``, operators
not compiled into this build: :mod:`.xml_refusals`) and SST values its Open throws on
(:mod:`.sst_params`) are errors; so are misspelled SST keys (with the key meant) and miscased ones on
SST; SST keys on other engines are notes, for the day the IO becomes SST.

Facts the checker relies on (ADIOS2 sources): engine types are matched case-insensitively; SST
matches parameter keys case-sensitively (``queuelimit`` is silently ignored) while BP4/BP5 do
not; SST parses enumerated values (``Block``) case-insensitively; unknown keys are ignored; of
duplicate keys the XML reader keeps the first (its YAML reader rejects them). The file is read by
:mod:`.xmlread` (standard library, with line numbers; ADIOS2's YAML form through PyYAML).
"""

from __future__ import annotations

import os

from .adios_build import build_facts
from .sst_params import DATA_PLANES, SST_DEFAULTS, SST_KEYS, key_problem, note_for_sst, stoi, value_problem
from .xml_refusals import load_findings
from .xmlgen import expected_ios
from .xmlread import Finding, read

__all__ = ["Finding", "check", "inspect", "format_findings"]

# Keys whose value is site-specific: a different value is a warning, not an error.
SITE_KEYS = ("NetworkInterface", "OpenTimeoutSecs")


def _bounded_queue(key, value):
    """A positive QueueLimit other than the expected one is tuning (warning); 0 means unbounded."""
    try:
        return key == "QueueLimit" and int(value) > 0
    except (TypeError, ValueError):
        return False


def _same(a, b):
    if a is None or b is None:
        return a == b
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip().lower() == b.strip().lower()


def check(cfg, path, *, io_name=None):
    """Compare an existing ADIOS2 XML file with :func:`~stagelearn.staging.xmlgen.generate`'s expectations.

    Parameters
    ----------
    cfg : RunConfig
    path : str or path
    io_name : str, optional
        The simulation's stream IO name (default: ``adios2.stream_io``).

    Returns
    -------
    findings : list of Finding
        Empty when the file has everything stagelearn relies on. What ADIOS2 refuses anywhere in the
        file (:func:`~stagelearn.staging.xml_refusals.load_findings`) comes first: it fails every IO.

    Raises
    ------
    ConfigError
        If the file cannot be read.
    """
    doc = read(path)
    if isinstance(doc, Finding):
        return [doc]
    refused = load_findings(doc)
    findings = _compare(cfg, doc.ios, io_name, yaml_form=doc.yaml_form)
    if _is_run_config_file(cfg, path):
        findings = [_set_at_run_time(f, cfg) for f in findings]
    return refused + findings


#: SST keys stagelearn's own writers set at run time from the run YAML's ``adios2:`` section
#: (``config.resolve_stream_params``): absent from the run's own XML, they are not missing.
RUN_TIME_KEYS = ("QueueLimit", "QueueFullPolicy", "NetworkInterface")


def _is_run_config_file(cfg, path):
    """True when ``path`` is the run's own ``adios2.config_file`` and stagelearn writes its streams (in situ)."""
    try:
        same = os.path.samefile(str(path), str(cfg.adios2.config_file))
    except OSError:
        return False
    return same and cfg.staging.mode != "in_transit"


def _set_at_run_time(finding, cfg):
    """A "not set" finding of a key stagelearn sets at run time, as a note saying where the value comes from."""
    if finding.key not in RUN_TIME_KEYS or "not set" not in finding.message:
        return finding
    value = {"QueueLimit": cfg.adios2.queue_limit, "QueueFullPolicy": cfg.adios2.queue_full_policy,
             "NetworkInterface": cfg.adios2.network_interface}[finding.key]
    return Finding("note", finding.io, finding.key, f"not in the file: stagelearn sets it at run time from the run "
                   f"YAML's adios2 section ({value})", finding.line)


def inspect(path):
    """Summarise and lint an existing ADIOS2 XML or YAML file; no run YAML needed.

    Errors for what ADIOS2 2.12.1 refuses or aborts on (two engines in an IO, bad ``<operation>``
    elements, operators not compiled in, SST values its Open throws on). Flags what ADIOS2 accepts
    silently but does not do: unknown or misspelled SST keys, SST keys in the wrong case (SST matches
    keys case-sensitively, BP4/BP5 do not), SST keys on other engines (notes), duplicate keys, SST IOs without a
    finite ``QueueLimit``; and files it cannot use: malformed XML/YAML, ADIOS 1.x files.

    Parameters
    ----------
    path : str or path
        ``.yaml``/``.yml`` is read as ADIOS2's YAML form, anything else as XML.

    Returns
    -------
    summary : list of str
        One line per IO: ``IO <name>: engine <type>; <key>=<value>, ...`` (the first of duplicate keys).
    findings : list of Finding

    Raises
    ------
    ConfigError
        If the file cannot be read.
    """
    doc = read(path)
    if isinstance(doc, Finding):
        return [], [doc]
    found, yaml_form = doc.ios, doc.yaml_form
    _, findings = _index_ios(found)
    findings += load_findings(doc)
    summary = []
    for io in found:
        first, linted = _lint_io(io, yaml_form=yaml_form, strict=SST_KEYS)
        engine = io.engine or "BP5 (no engine given: ADIOS2's default, a BP file)"
        params = ", ".join(f"{p.key}={p.value}" for p in first.values()) or "no parameters"
        summary.append(f"IO {io.name}: engine {engine}; {params}")
        findings += linted
        if (io.engine or "").lower() == "sst":
            findings += _queue_findings(io, first.get("QueueLimit"))
    if not found:
        decl = "- IO: name" if yaml_form else "<io name=...>"
        findings.append(Finding("warning", "", "", f"no IO defined ({decl})", 1))
    return summary, findings


def _queue_findings(io, limit):
    """An SST IO whose writer queue is unbounded (QueueLimit missing or 0) or unparsable."""
    fix = "set QueueLimit to a few steps (e.g. 4) with QueueFullPolicy Block or Discard"
    if limit is None:
        return [Finding("warning", io.name, "QueueLimit", f"not set: SST's default 0 queues steps without limit, so a "
                                                          f"writer whose reader falls behind grows its memory; {fix}",
                        io.engine_line)]
    value = stoi(limit.value or "")  # what SST reads (std::stoi)
    if value is None:
        return [Finding("error", io.name, "QueueLimit", f"{limit.value!r} is not an integer (the engine's Open throws); "
                                                        f"{fix}", limit.line)]
    if value <= 0:
        return [Finding("warning", io.name, "QueueLimit", f"{limit.value}: the writer's queue is unbounded; {fix}",
                        limit.line)]
    problem = value_problem("QueueLimit", limit.value)
    return [Finding(problem[0], io.name, "QueueLimit", problem[1], limit.line)] if problem else []


def _index_ios(found):
    """IOs by name, and findings for IOs without a name or defined twice."""
    findings = []
    by_name = {}
    for io in found:
        if not io.name:
            findings.append(Finding("error", "", "", "an <io> element has no name attribute", io.line))
        elif io.name in by_name:
            findings.append(Finding("error", io.name, "", f"IO defined twice (first on line {by_name[io.name].line})",
                                    io.line))
        else:
            by_name[io.name] = io
    return by_name, findings


def _compare(cfg, found, io_name, *, yaml_form=False):
    by_name, findings = _index_ios(found)
    for role, name, engine, params in expected_ios(cfg, io_name=io_name):
        io = by_name.get(name)
        if io is None:
            hint = ""
            if role == "stream":
                hint = (f" (the file defines {sorted(by_name)}; pass the simulation's IO name with --io)" if by_name
                        else " (the file defines no IO)")
            near = [n for n in by_name if n.lower() == name.lower()]
            if near:
                hint = f" (there is {near[0]!r}: IO names are case-sensitive)"
            decl = f"- IO: {name}" if yaml_form else f"<io name=\"{name}\">"
            if role != "stream":  # an unchanged code streams only; the model and output IOs are staging's
                hint += " (needed only if this file is also the run's adios2.config_file)"
            findings.append(Finding("error" if role == "stream" else "warning", name, "",
                                    f"missing {decl} for the {role} IO{hint}"))
            continue
        findings += _check_io(role, io, engine, params, yaml_form=yaml_form)
    return findings


def _lint_io(io, *, yaml_form, strict, all_notes=True):
    """Findings that need no expectations: duplicate keys; on SST, keys SST does not match (a miscased
    key is an error for the canonical keys in ``strict``, else a warning; a misspelled one an error) and
    values SST refuses (:func:`~stagelearn.staging.sst_params.value_problem`); on other engines, misspelled
    SST keys (errors) and SST keys (notes, for the day the IO becomes SST; with ``all_notes`` False only those
    that would need a change then).

    Returns ``(first, findings)``: ``first`` maps each key to its first :class:`~.xmlread.Param` (what ADIOS2 keeps).
    """
    out = []
    first = {}
    for p in io.params:
        if p.key in first:
            kept = first[p.key]
            same = p.value == kept.value
            if yaml_form:
                out.append(Finding("error", io.name, p.key, f"duplicate key (first on line {kept.line}): ADIOS2's "
                                                            "YAML reader rejects the file", p.line))
                continue
            out.append(Finding("warning" if same else "error", io.name, p.key,
                               f"duplicate key; ADIOS2 keeps the first (line {kept.line}, value {kept.value!r})"
                               + ("" if same else f" and ignores {p.value!r}"), p.line))
        else:
            first[p.key] = p
    engine = io.engine or ""
    sst = engine.lower() == "sst"
    for key, p in first.items():
        if not sst:
            problem = key_problem(key, engine)
            note = None if problem else note_for_sst(key, p.value or "", engine, data_planes=_planes(key, p.value),
                                                         fixes_only=not all_notes)
            if problem or note:
                out.append(Finding(problem[0], io.name, key, problem[1], p.line) if problem
                           else Finding("note", io.name, key, note, p.line))
            continue
        if key in SST_KEYS:
            if key != "QueueLimit":  # judged with the queue (inspect) or against the expected value (check)
                problem = value_problem(key, p.value or "", data_planes=_planes(key, p.value))
                if problem:
                    out.append(Finding(problem[0], io.name, key, problem[1], p.line))
            continue
        severity, message, canon = key_problem(key, engine)
        if canon is not None and canon.lower() == key.lower():
            if canon in first:
                severity, message = "warning", (f"SST matches keys case-sensitively: ignored (the {canon!r} on "
                                                f"line {first[canon].line} applies)")
            elif canon not in strict:
                severity = "warning"
        out.append(Finding(severity, io.name, key, message, p.line))
    return first, out


def _planes(key, value):
    """The build's SST data planes, asked only where a DataTransport names one other than WAN."""
    if key.lower() != "datatransport" or DATA_PLANES.get(str(value).strip().lower()) in (None, "evpath"):
        return None
    facts = build_facts()
    return facts["data_planes"] if facts else None


def _check_io(role, io, engine, expected, *, yaml_form=False):
    actual = io.engine or "BP5"  # no <engine>: ADIOS2's default (a BP file)
    first, out = _lint_io(io, yaml_form=yaml_form, strict=set(expected) - set(SITE_KEYS), all_notes=False)
    if actual.lower() != engine.lower():
        sev = "warning" if role == "output" and actual.lower() in ("bp3", "bp4", "bpfile", "file") else "error"
        what = f"engine {actual}" if io.engine else "no <engine> (ADIOS2 then writes a BP file)"
        out.append(Finding(sev, io.name, "", f"{what}; expected {engine}", io.engine_line or io.line))
        return out  # the parameters of another engine are not comparable
    if actual != engine:
        out.append(Finding("warning", io.name, "", f"engine type {actual!r}: ADIOS2 accepts it (case-insensitive), "
                                                   f"the canonical spelling is {engine!r}", io.engine_line))
    if engine != "SST":
        return out
    refused = {f.key for f in out if f.severity == "error"}  # values SST refuses: said once, above
    for key, want in expected.items():
        p = first.get(key)
        if p is None:
            if any(k.lower() == key.lower() for k in first):
                continue  # reported above as a case finding
            default = SST_DEFAULTS.get(key)
            if key == "OpenTimeoutSecs":
                continue  # stagelearn's readers set it themselves
            if default is not None and _same(default, want):
                out.append(Finding("warning", io.name, key, f"not set; SST's default {default} is what stagelearn "
                                                            f"expects, set it explicitly", io.engine_line))
            else:
                sev = "warning" if key in SITE_KEYS else "error"
                dflt = f" (SST's default: {default})" if default is not None else ""
                out.append(Finding(sev, io.name, key, f"not set{dflt}; expected {want}", io.engine_line))
        elif not _same(p.value, want) and key not in refused:
            sev = "warning" if key in SITE_KEYS or _bounded_queue(key, p.value) else "error"
            extra = " (must be an interface both sides reach, the same in staging's XML)" if key == "NetworkInterface" else ""
            out.append(Finding(sev, io.name, key, f"{p.value!r}; expected {want!r}{extra}", p.line))
    latest = first.get("AlwaysProvideLatestTimestep")
    if role == "stream" and latest is not None and str(latest.value).strip().lower() in ("true", "yes", "on"):
        out.append(Finding("error", io.name, "AlwaysProvideLatestTimestep",
                           "true makes the reader skip steps; staging needs every step", latest.line))
    return out


def format_findings(findings, path):
    """One line per finding (see :meth:`Finding.format`)."""
    return [f.format(path) for f in findings]
