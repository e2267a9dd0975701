"""``stagelearn xml --check`` and ``--inspect``: findings on an existing ADIOS2 XML or YAML file.

:func:`check` compares a file against what :func:`stagelearn.staging.xmlgen.generate` writes for a
run YAML and returns :class:`Finding` objects; :func:`inspect` needs no run YAML: it summarises any
ADIOS2 XML/YAML per IO and flags mistakes (unknown or miscased SST keys, duplicate keys, an
unbounded SST queue, ADIOS 1 files).

Facts the checker relies on (ADIOS2 sources): engine types are matched case-insensitively; SST
matches parameter keys case-sensitively (``queuelimit`` is silently ignored) while BP4/BP5 do
not; SST parses enumerated values (``Block``) case-insensitively; unknown keys are ignored; of
duplicate keys the XML reader keeps the first (its YAML reader rejects them). Only the standard
library parses the XML (:func:`_scan`, with line numbers); ADIOS2's YAML form (``.yaml``/``.yml``)
is checked too, through PyYAML.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.parsers import expat

import yaml

from .errors import ConfigError
from .xmlgen import SST_KEYS, expected_ios

# SST's own defaults, used to tell "missing but harmless" from "missing and wrong".
SST_DEFAULTS = {"RendezvousReaderCount": "1", "QueueLimit": "0", "QueueFullPolicy": "Block", "OpenTimeoutSecs": "60"}
# Keys whose value is site-specific: a different value is a warning, not an error.
SITE_KEYS = ("NetworkInterface", "OpenTimeoutSecs")
# Children of <adios-config> in ADIOS 1.x files; ADIOS2 has <io> (its <transport> sits inside an <io>).
ADIOS1_TAGS = ("adios-group", "method", "transport", "buffer", "analysis")


@dataclass
class Finding:
    """One problem in an ADIOS2 XML: ``severity`` is ``"error"`` (the run will not work as configured)
    or ``"warning"``; ``io`` and ``key`` are empty where they do not apply; ``line`` is 1-based or None."""

    severity: str
    io: str
    key: str
    message: str
    line: int | None = None

    def format(self, path):
        """``file:line: severity: io/key: message`` (line and io/key left out when unknown)."""
        where = f"{path}:{self.line}" if self.line else str(path)
        what = "/".join(p for p in (self.io, self.key) if p)
        return f"{where}: {self.severity}: " + (f"{what}: " if what else "") + self.message


# --- reading an existing file, with line numbers ---

@dataclass
class _Param:
    key: str
    value: str | None
    line: int


@dataclass
class _IO:
    name: str
    line: int
    engine: str | None = None
    engine_line: int | None = None
    engines: int = 0
    params: list = None


def _scan(data):
    """Root tag, the IOs and the root's other children (tag to first line) of a well-formed
    document, with element line numbers (pyexpat)."""
    stack, ios, root, children = [], [], [], {}
    p = expat.ParserCreate()

    def start(tag, attrs):
        line = p.CurrentLineNumber
        if not stack:
            root.append(tag)
        parent = stack[-1] if stack else None
        if len(stack) == 1 and tag != "io":
            children.setdefault(tag, line)
        if tag == "io" and len(stack) == 1:
            ios.append(_IO(attrs.get("name", ""), line, params=[]))
        elif tag == "engine" and parent == "io" and len(stack) == 2 and ios:
            io = ios[-1]
            io.engines += 1
            if io.engines == 1:
                io.engine, io.engine_line = attrs.get("type"), line
        elif tag == "parameter" and parent == "engine" and len(stack) == 3 and ios and ios[-1].engines == 1:
            ios[-1].params.append(_Param(attrs.get("key", ""), attrs.get("value"), line))
        stack.append(tag)

    p.StartElementHandler = start
    p.EndElementHandler = lambda tag: stack.pop()
    p.Parse(data, True)
    return root[0], ios, children


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
        Empty when the file has everything stagelearn relies on.

    Raises
    ------
    ConfigError
        If the file cannot be read.
    """
    found, yaml_form = _read(path)
    return [found] if isinstance(found, Finding) else _compare(cfg, found, io_name, yaml_form=yaml_form)


def inspect(path):
    """Summarise and lint an existing ADIOS2 XML or YAML file; no run YAML needed.

    Flags what ADIOS2 accepts silently but does not do: unknown SST keys, SST keys in the wrong
    case (SST matches keys case-sensitively, BP4/BP5 do not), duplicate keys, SST IOs without a
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
    found, yaml_form = _read(path)
    if isinstance(found, Finding):
        return [], [found]
    _, findings = _index_ios(found)
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
    try:
        value = int(limit.value)
    except (TypeError, ValueError):
        return [Finding("error", io.name, "QueueLimit", f"{limit.value!r} is not an integer; {fix}", limit.line)]
    if value <= 0:
        return [Finding("warning", io.name, "QueueLimit", f"{limit.value}: the writer's queue is unbounded; {fix}",
                        limit.line)]
    return []


def _read(path):
    """The IOs of an ADIOS2 XML or YAML file and whether it is the YAML form.

    Returns ``(ios, yaml_form)``; ``ios`` is a :class:`Finding` instead when the file is unusable
    (malformed, another root element, an ADIOS 1.x file). Raises ConfigError if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ADIOS2 XML ({exc.strerror})") from None
    if str(path).lower().endswith((".yaml", ".yml")):
        return _scan_yaml(data), True
    parser = ET.XMLParser()
    try:
        parser.feed(data)
        parser.close()
    except ET.ParseError as exc:
        line, col = exc.position
        msg = str(exc).split(":")[0]
        return Finding("error", "", "", f"malformed XML at column {col + 1} ({msg})", line), False
    root, found, children = _scan(data)
    if root != "adios-config":
        return Finding("error", "", "", f"the root element is <{root}>; ADIOS2 expects <adios-config>", 1), False
    old = [tag for tag in children if tag in ADIOS1_TAGS]
    if old:
        tags = ", ".join(f"<{t}>" for t in old)
        return Finding("error", "", "", f"an ADIOS 1.x configuration ({tags} under <adios-config>), which ADIOS2 "
                                        "does not read: rewrite it for ADIOS2 with one <io name=...> per group, holding "
                                        "an <engine type=...> with <parameter key=... value=.../> elements (the "
                                        "method becomes the engine, e.g. BP5 or SST)", children[old[0]]), False
    return found, False


def _scan_yaml(data):
    """The IOs of an ADIOS2 YAML config (a list of ``{IO: name, Engine: {Type: ..., key: value}}``),
    from the YAML node tree so that lines and duplicate keys are kept; a :class:`Finding` if unusable."""
    try:
        doc = yaml.compose(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return Finding("error", "", "", f"malformed YAML ({getattr(exc, 'problem', exc)})", mark.line + 1 if mark else None)
    if not isinstance(doc, yaml.SequenceNode):
        return Finding("error", "", "", "an ADIOS2 YAML config is a list of IOs (- IO: name)", 1)
    ios = []
    for item in doc.value:
        if not isinstance(item, yaml.MappingNode):
            continue
        fields = {k.value: v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
        name = fields.get("IO")
        io = _IO(name.value if isinstance(name, yaml.ScalarNode) else "", item.start_mark.line + 1, params=[])
        engine = fields.get("Engine")
        if isinstance(engine, yaml.MappingNode):
            io.engines, io.engine_line = 1, engine.start_mark.line + 1
            for k, v in engine.value:
                if k.value == "Type":
                    io.engine = str(v.value)
                elif isinstance(v, yaml.ScalarNode):
                    io.params.append(_Param(str(k.value), str(v.value), k.start_mark.line + 1))
        ios.append(io)
    return ios


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


def _lint_io(io, *, yaml_form, strict):
    """Findings that need no expectations: several engines, duplicate keys and, on SST, unknown or
    miscased keys (an error for the canonical keys in ``strict``, else a warning).

    Returns ``(first, findings)``: ``first`` maps each key to its first :class:`_Param` (what ADIOS2 keeps).
    """
    out = []
    if io.engines > 1:
        out.append(Finding("warning", io.name, "", f"{io.engines} <engine> elements; only the first is read", io.line))
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
    if (io.engine or "").lower() != "sst":
        return first, out
    known_lower = {k.lower(): k for k in SST_KEYS}
    for key, p in first.items():
        canon = known_lower.get(key.lower())
        if canon is None:
            near = difflib.get_close_matches(key, SST_KEYS, n=1, cutoff=0.8)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            out.append(Finding("warning", io.name, key, f"not an SST parameter; SST ignores it{hint}", p.line))
        elif canon != key:
            if canon in first:
                out.append(Finding("warning", io.name, key, f"SST matches keys case-sensitively: ignored "
                                                            f"(the {canon!r} on line {first[canon].line} applies)", p.line))
            else:
                sev = "error" if canon in strict else "warning"
                out.append(Finding(sev, io.name, key, f"SST matches keys case-sensitively: {key!r} is ignored; "
                                                      f"write {canon!r}", p.line))
    return first, out


def _check_io(role, io, engine, expected, *, yaml_form=False):
    actual = io.engine or "BP5"  # no <engine>: ADIOS2's default (a BP file)
    first, out = _lint_io(io, yaml_form=yaml_form, strict=set(expected) - set(SITE_KEYS))
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
        elif not _same(p.value, want):
            sev = "warning" if key in SITE_KEYS or _bounded_queue(key, p.value) else "error"
            extra = " (must be an interface both sides reach, the same in staging's XML)" if key == "NetworkInterface" else ""
            out.append(Finding(sev, io.name, key, f"{p.value!r}; expected {want!r}{extra}", p.line))
    latest = first.get("AlwaysProvideLatestTimestep")
    if role == "stream" and latest is not None and str(latest.value).strip().lower() in ("true", "1", "yes", "on"):
        out.append(Finding("error", io.name, "AlwaysProvideLatestTimestep",
                           "true makes the reader skip steps; staging needs every step", latest.line))
    return out


def format_findings(findings, path):
    """One line per finding (see :meth:`Finding.format`)."""
    return [f.format(path) for f in findings]
