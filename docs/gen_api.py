"""Write docs/api.md from the numpydoc docstrings of the public API.

Usage::

    .venv/bin/python docs/gen_api.py            # rewrite docs/api.md
    .venv/bin/python docs/gen_api.py --stdout   # print it instead

Documented: :class:`stagelearn.staging.Producer` and the learners of
:mod:`stagelearn.analytics.learners` (``IncrementalPCA``, ``DistributedPCA``,
``AutoencoderLearner``, ``make_learner``). ``tests/test_docs.py`` checks that every name in
docs/api.md still exists.
"""
import argparse
import importlib
import inspect
import pathlib
import re

# (import path, object name): the public API, in page order
OBJECTS = [
    ("stagelearn.staging", "Producer"),
    ("stagelearn.analytics.learners", "IncrementalPCA"),
    ("stagelearn.analytics.learners", "DistributedPCA"),
    ("stagelearn.analytics.learners.autoencoder", "AutoencoderLearner"),
    ("stagelearn.analytics.learners", "make_learner"),
]
SECTIONS = {"Parameters", "Returns", "Yields", "Raises", "Attributes", "Notes", "Examples", "See Also",
            "Warns", "Other Parameters", "References", "Methods"}
LISTED = {"Parameters", "Returns", "Yields", "Raises", "Attributes", "Warns", "Other Parameters"}
OUT = pathlib.Path(__file__).with_name("api.md")


def _inline(text):
    """RST inline markup to Markdown: ``x`` and :role:`~a.b` to `x` / `b`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: "`" + m.group(1).split(".")[-1] + "`"
                  if m.group(0).split("`")[1].startswith("~") else "`" + m.group(1) + "`", text)
    return text.replace("``", "`")


def docstring_md(doc):
    """A numpydoc docstring as Markdown: section headers in bold, parameters as a list."""
    lines = inspect.cleandoc(doc or "(no docstring)").splitlines()
    out, section, i, fence = [], None, 0, False
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() in SECTIONS and set(nxt.strip()) == {"-"}:
            section = line.strip()
            out += ["", f"**{section}**", ""]
            i += 2
            continue
        if line.rstrip().endswith("::") and not fence:  # RST literal block
            out += [_inline(line.rstrip()[:-1]), "", "```python"]
            fence, i = True, i + 1
            continue
        if fence:
            if line and not line.startswith(" "):
                out += ["```", ""]
                fence = False
                continue
            out.append(line[4:] if line.startswith("    ") else line)
            i += 1
            continue
        if section in LISTED and line and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            out.append(f"- `{name.strip()}`" + (f" ({_inline(kind.strip())})" if kind else "") + ":")
        elif section in LISTED and line.startswith(" "):
            out.append("  " + _inline(line.strip()))
        else:
            out.append(_inline(line))
        i += 1
    if fence:
        out.append("```")
    return "\n".join(out).strip() + "\n"


def _signature(obj, name):
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def public_members(cls):
    """Public methods and properties defined by ``cls`` itself or its package's bases, in source order."""
    members = []
    for klass in reversed(cls.__mro__[:-1]):
        if not klass.__module__.startswith("stagelearn"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in [m[0] for m in members]:
                continue
            if isinstance(value, property) or inspect.isfunction(value):
                members.append((name, getattr(cls, name)))
    return members


def render():
    """The whole page."""
    parts = ["# API reference", "",
             "Generated from the numpydoc docstrings by `.venv/bin/python docs/gen_api.py`; do not edit by hand.",
             "How the pieces fit: [concepts](concepts.md); a complete script: "
             "[examples/own_simulation/my_sim.py](../examples/own_simulation/my_sim.py).", ""]
    for module, name in OBJECTS:
        obj = getattr(importlib.import_module(module), name)
        parts += [f"## `{module}.{name}`", "", "```python", _signature(obj, name), "```", "", docstring_md(obj.__doc__)]
        if inspect.isclass(obj):
            for mname, member in public_members(obj):
                if isinstance(inspect.getattr_static(obj, mname), property):
                    doc = inspect.getattr_static(obj, mname).__doc__ or "(property)"
                    parts += [f"### `{name}.{mname}` (property)", "", _inline(doc.strip()), ""]
                else:
                    parts += [f"### `{name}.{mname}`", "", "```python", _signature(member, mname), "```", "",
                              docstring_md(member.__doc__)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="write docs/api.md from the docstrings")
    parser.add_argument("--stdout", action="store_true", help="print the page instead of writing docs/api.md")
    args = parser.parse_args(argv)
    page = render()
    if args.stdout:
        print(page, end="")
    else:
        OUT.write_text(page)
        print(f"wrote {OUT} ({len(page)} characters)")


if __name__ == "__main__":
    main()
