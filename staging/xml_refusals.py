"""What ADIOS2 2.12.1 refuses in a configuration file: the findings that make the code throw or abort.

The ADIOS constructor parses the whole XML (``ParseConfigXML`` in
``source/adios2/helper/adiosXML.cpp``), so a refusal in any IO fails every IO of the file:

- two ``<engine>`` elements in one ``<io>``: "XML only one <engine> element can exist inside <io>
  element" (``XMLNode(..., isUnique)`` in ``adiosXMLUtil.cpp``);
- an ``<operation>`` with both ``operator=`` and ``type=`` ("attributes can't coexist"), with neither,
  or naming an ``operator=`` not defined by a top-level ``<operator>``;
- a top-level ``<operator>`` whose type is unknown ("ADIOS2 does not support X operation") or not
  compiled into this build (``MissingOperatorFailure``).

An ``<operation type=...>`` is applied when the code defines the variable (``IO::DefineVariable``):
an operator not compiled in then throws ``MissingOperatorFailure`` out of the code's own call, which
aborts a C++ code (``terminate``). :func:`load_findings` reports all of these as errors, naming
the IO, the element and, for operators, what this build has (:mod:`.adios_build`).
"""

from __future__ import annotations

from .adios_build import OPERATOR_TYPES, build_facts, operators_text
from .xmlread import Finding


def _operator_problem(typ, facts):
    """Why ``typ`` cannot be used by this ADIOS2 (None if it can, or if the build cannot be asked)."""
    low = (typ or "").strip().lower()
    if low not in OPERATOR_TYPES:
        return (f"ADIOS2 2.12.1 has no operator type {typ!r} (\"ADIOS2 does not support {low} operation\"); "
                f"known types: {', '.join(OPERATOR_TYPES)}")
    if facts is not None and low not in facts["operators"]:
        return (f"operator {low!r} is not compiled into this ADIOS2 ({facts['version']} at {facts['prefix']}): "
                f"it throws MissingOperatorFailure (\"ADIOS2 didn't compile with {low} library\"); this build has "
                f"{operators_text(facts)}")
    return None


def load_findings(doc):
    """Errors for everything in ``doc`` that ADIOS2 2.12.1 refuses to load or aborts on.

    Parameters
    ----------
    doc : stagelearn.staging.xmlread.Document

    Returns
    -------
    findings : list of Finding
        Severity ``"error"``; a file-level finding has an empty ``io``.
    """
    out = []
    for io in doc.ios:
        if io.engines > 1:
            out.append(Finding("error", io.name, "", f"{io.engines} <engine> elements in one <io>: ADIOS2 refuses the "
                                                     "file (\"XML only one <engine> element can exist inside <io> "
                                                     "element\", thrown by the ADIOS constructor, so every IO of the "
                                                     "file fails); keep one <engine>", io.line))
    operators = {op.name: op for op in doc.operators if op.name}
    needs_build = any(op.type for op in doc.operators) or any(o.type or o.operator for io in doc.ios
                                                               for o in io.operations)
    facts = build_facts() if needs_build else None
    for op in doc.operators:
        what = f"<operator name=\"{op.name}\" type=\"{op.type}\">"
        if not op.name or not op.type:
            out.append(Finding("error", "", "", f"{what}: an <operator> needs both name= and type=", op.line))
            continue
        problem = _operator_problem(op.type, facts)
        if problem:
            out.append(Finding("error", "", "", f"{what}: {problem}; ADIOS2 throws in its constructor (the code "
                                                "fails before any IO is declared): remove the <operator> and its "
                                                "uses, or use an operator this build has", op.line))
    for io in doc.ios:
        for o in io.operations:
            if doc.yaml_form:
                where = f"Variable {o.variable}: Operations: Type {o.type}"
            else:
                where = f"<variable name=\"{o.variable}\">: <operation"
                where += "".join(f" {a}=\"{v}\"" for a, v in (("operator", o.operator), ("type", o.type))
                                 if v is not None) + ">"
            if o.operator is not None and o.type is not None:
                out.append(Finding("error", io.name, "", f"{where}: operator= and type= cannot both be given: ADIOS2 "
                                                         "refuses the file (\"attributes can't coexist in <operation> "
                                                         "element\"); keep one of them", o.line))
                continue
            if o.operator is None and o.type is None:
                need = "a Type" if doc.yaml_form else "operator= (a defined <operator>) or type="
                out.append(Finding("error", io.name, "", f"{where}: needs {need}: ADIOS2 refuses the file", o.line))
                continue
            typ = o.type
            if o.operator is not None:
                if o.operator not in operators:
                    defined = sorted(operators) or "none"
                    out.append(Finding("error", io.name, "", f"{where}: operator {o.operator!r} is not defined by a "
                                                             f"top-level <operator name=...> (defined: {defined}): "
                                                             "ADIOS2 refuses the file", o.line))
                continue  # a defined operator's type is judged at the <operator>
            problem = _operator_problem(typ, facts)
            if problem:
                out.append(Finding("error", io.name, "", f"{where}: {problem}; the code aborts when it defines "
                                                         f"variable {o.variable!r}: remove the <operation> or use an "
                                                         "operator this build has", o.line))
    return out
