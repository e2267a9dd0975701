"""Reading an existing ADIOS2 XML or YAML configuration with line numbers, for ``stagelearn xml --check/--inspect``.

:func:`read` returns a :class:`Document`: per IO its engines, parameters (every one, duplicates
kept) and the ``<operation>`` elements of its variables, and the file's top-level ``<operator>``
elements; or a :class:`Finding` when ADIOS2 cannot use the file at all (malformed, another root
element, an ADIOS 1.x file). Only the standard library parses the XML (pyexpat, for line numbers);
ADIOS2's YAML form (``.yaml``/``.yml``) goes through PyYAML's node tree (lines and duplicate keys kept).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.parsers import expat

import yaml

from .errors import ConfigError

# Children of <adios-config> in ADIOS 1.x files; ADIOS2 has <io> (its <transport> sits inside an <io>).
ADIOS1_TAGS = ("adios-group", "method", "transport", "buffer", "analysis")


@dataclass
class Finding:
    """One problem in an ADIOS2 XML: ``severity`` is ``"error"`` (ADIOS2 refuses the file, or the run will
    not work as configured), ``"warning"`` or ``"note"`` (harmless now, e.g. for the day an IO becomes SST);
    ``io`` and ``key`` are empty where they do not apply; ``line`` is 1-based or None."""

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


@dataclass
class Param:
    """One ``<parameter key= value=>`` (or ``key: value`` of the YAML form)."""

    key: str
    value: str | None
    line: int


@dataclass
class Operation:
    """One ``<operation>`` of ``<variable name=...>``: its ``operator=`` (a top-level operator's name) and
    ``type=`` attributes (None where absent)."""

    variable: str
    operator: str | None
    type: str | None
    line: int


@dataclass
class Operator:
    """A top-level ``<operator name= type=>`` (ADIOS2 defines it in its constructor)."""

    name: str | None
    type: str | None
    line: int


@dataclass
class IO:
    """One IO: the first engine's type and parameters (what ADIOS2 reads), how many engines, its operations."""

    name: str
    line: int
    engine: str | None = None
    engine_line: int | None = None
    engines: int = 0
    params: list = field(default_factory=list)
    operations: list = field(default_factory=list)


@dataclass
class Document:
    """An ADIOS2 configuration file: its IOs in order, its top-level operators, whether it is the YAML form."""

    ios: list
    operators: list = field(default_factory=list)
    yaml_form: bool = False


def _scan(data):
    """Root tag, IOs, top-level operators and the root's other children (tag to first line) of a
    well-formed document, with element line numbers (pyexpat)."""
    stack, ios, root, children, operators = [], [], [], {}, []
    var = [None]
    p = expat.ParserCreate()

    def start(tag, attrs):
        line, depth = p.CurrentLineNumber, len(stack)
        if not stack:
            root.append(tag)
        parent = stack[-1] if stack else None
        if depth == 1 and tag not in ("io", "operator"):
            children.setdefault(tag, line)
        if tag == "io" and depth == 1:
            ios.append(IO(attrs.get("name", ""), line))
        elif tag == "operator" and depth == 1:
            operators.append(Operator(attrs.get("name"), attrs.get("type"), line))
        elif tag == "engine" and parent == "io" and depth == 2 and ios:
            io = ios[-1]
            io.engines += 1
            if io.engines == 1:
                io.engine, io.engine_line = attrs.get("type"), line
        elif tag == "parameter" and parent == "engine" and depth == 3 and ios and ios[-1].engines == 1:
            ios[-1].params.append(Param(attrs.get("key", ""), attrs.get("value"), line))
        elif tag == "variable" and parent == "io" and depth == 2:
            var[0] = attrs.get("name", "")
        elif tag == "operation" and parent == "variable" and depth == 3 and ios:
            ios[-1].operations.append(Operation(var[0], attrs.get("operator"), attrs.get("type"), line))
        stack.append(tag)

    p.StartElementHandler = start
    p.EndElementHandler = lambda tag: stack.pop()
    p.Parse(data, True)
    return root[0], ios, children, operators


def read(path):
    """The :class:`Document` of an ADIOS2 XML or YAML file, or a :class:`Finding` when it is unusable.

    Raises
    ------
    ConfigError
        If the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ADIOS2 XML ({exc.strerror})") from None
    if str(path).lower().endswith((".yaml", ".yml")):
        return _scan_yaml(data)
    parser = ET.XMLParser()
    try:
        parser.feed(data)
        parser.close()
    except ET.ParseError as exc:
        line, col = exc.position
        msg = str(exc).split(":")[0]
        return Finding("error", "", "", f"malformed XML at column {col + 1} ({msg})", line)
    root, found, children, operators = _scan(data)
    if root != "adios-config":
        return Finding("error", "", "", f"the root element is <{root}>; ADIOS2 expects <adios-config>", 1)
    old = [tag for tag in children if tag in ADIOS1_TAGS]
    if old:
        tags = ", ".join(f"<{t}>" for t in old)
        return Finding("error", "", "", f"an ADIOS 1.x configuration ({tags} under <adios-config>), which ADIOS2 "
                                        "does not read: rewrite it for ADIOS2 with one <io name=...> per group, holding "
                                        "an <engine type=...> with <parameter key=... value=.../> elements (the "
                                        "method becomes the engine, e.g. BP5 or SST)", children[old[0]])
    return Document(found, operators)


def _scan_yaml(data):
    """The :class:`Document` of an ADIOS2 YAML config (a list of ``{IO: name, Engine: {Type: ..., key: value},
    Variables: [{Variable: name, Operations: [{Type: ...}]}]}``), from the YAML node tree so that lines and
    duplicate keys are kept; a :class:`Finding` if unusable."""
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
        fields = _fields(item)
        name = fields.get("IO")
        io = IO(name.value if isinstance(name, yaml.ScalarNode) else "", item.start_mark.line + 1)
        engine = fields.get("Engine")
        if isinstance(engine, yaml.MappingNode):
            io.engines, io.engine_line = 1, engine.start_mark.line + 1
            for k, v in engine.value:
                if k.value == "Type":
                    io.engine = str(v.value)
                elif isinstance(v, yaml.ScalarNode):
                    io.params.append(Param(str(k.value), str(v.value), k.start_mark.line + 1))
        variables = fields.get("Variables")
        for var in variables.value if isinstance(variables, yaml.SequenceNode) else ():
            vf = _fields(var) if isinstance(var, yaml.MappingNode) else {}
            vname, ops = vf.get("Variable"), vf.get("Operations")
            for op in ops.value if isinstance(ops, yaml.SequenceNode) else ():
                of = _fields(op) if isinstance(op, yaml.MappingNode) else {}
                typ = of.get("Type")
                io.operations.append(Operation(vname.value if isinstance(vname, yaml.ScalarNode) else "", None,
                                               typ.value if isinstance(typ, yaml.ScalarNode) else None,
                                               op.start_mark.line + 1))
        ios.append(io)
    return Document(ios, yaml_form=True)


def _fields(node):
    return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
