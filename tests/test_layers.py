"""The house's layers (README, "The code"): each folder imports only from its own layer and the layers below it,
no file imports another in a circle, and the README's map lists the folders in this order (top first). Every import counts,
the ones inside functions too: a lazy import is still a dependency."""
import ast
import re
from pathlib import Path

from conftest import ROOT

# bottom to top; a root file belongs to the layer it is part of (model.py is the GPT family, train.py one run)
LAYERS = [
    ("core", ["core"]),
    ("data", ["data"]),
    ("scoring", ["scoring"]),
    ("models", ["models", "model.py"]),
    ("methods", ["methods"]),
    ("run", ["run", "train.py"]),
    ("experiment", ["experiment"]),
    ("entry points", ["w2s.py", "eval.py", "bench.py", "benchmarks"]),
]
MAX_FILE_LINES = 600
MAX_TRAIN_LINES = 400
MAX_FUNCTION_LINES = 60


def project_files():
    """{module name: path} of every module of the project outside tests/."""
    files = {}
    for _, units in LAYERS:
        for unit in units:
            for path in [ROOT / unit] if unit.endswith(".py") else sorted((ROOT / unit).glob("*.py")):
                rel = path.relative_to(ROOT).with_suffix("")
                files[".".join(p for p in rel.parts if p != "__init__" or len(rel.parts) == 1)] = path
    return files


def layer_of(module):
    top = module.split(".")[0]
    for i, (_, units) in enumerate(LAYERS):
        if top in {u.removesuffix(".py") for u in units}:
            return i
    return None


def imports_of(path, modules):
    """The project modules a file imports, with the line of each."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno))
    return found


def graph():
    modules = project_files()
    return modules, {m: imports_of(p, modules) for m, p in modules.items()}


def test_every_module_of_the_project_is_in_a_layer():
    loose = [p.name for p in ROOT.glob("*.py") if layer_of(p.stem) is None]
    folders = [p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file() and layer_of(p.name) is None]
    assert not loose and not folders, f"not in a layer of tests/test_layers.py: {loose + folders}"


def test_no_module_imports_from_a_layer_above_its_own():
    modules, imports = graph()
    upward = [f"{modules[m].relative_to(ROOT)}:{line} imports {target} ({LAYERS[layer_of(target)][0]} is above "
              f"{LAYERS[layer_of(m)][0]})"
              for m, found in imports.items() for target, line in found if layer_of(target) > layer_of(m)]
    assert not upward, "\n".join(upward)


def find_circle(edges):
    """One circle of the directed graph {node: {node}}, as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_find_circle_finds_a_circle_and_only_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_two_files_import_each_other_in_a_circle():
    _, imports = graph()
    edges = {m: {t for t, _ in found if t != m and not (m == t.rpartition(".")[0] or t == m.rpartition(".")[0])}
             for m, found in imports.items()}  # a package's __init__ and its own modules are one unit
    circle = find_circle(edges)
    assert circle is None, " -> ".join(circle or [])


def test_no_two_folders_import_each_other_in_a_circle():
    _, imports = graph()
    unit = lambda m: m.split(".")[0] if "." in m or (ROOT / m).is_dir() else m  # noqa: E731
    edges = {}
    for m, found in imports.items():
        edges.setdefault(unit(m), set()).update(unit(t) for t, _ in found if unit(t) != unit(m))
    folders = {u for u in edges if (ROOT / u).is_dir()}
    circle = find_circle({u: {v for v in e if v in folders} for u, e in edges.items() if u in folders})
    assert circle is None, " -> ".join(circle or [])


def test_no_file_over_600_lines_train_py_at_most_400_and_no_function_over_60():
    modules = project_files()
    long_files = [f"{p.relative_to(ROOT)}: {n}" for p in modules.values()
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    train_lines = len((ROOT / "train.py").read_text().splitlines())
    long_functions = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
                      for p in modules.values() for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long_files and train_lines <= MAX_TRAIN_LINES and not long_functions, \
        (long_files, train_lines, long_functions)


def test_the_readme_map_lists_the_folders_in_layer_order():
    """The README's map of the code names each folder in a row of its table, top layer first: a row imports only
    from the rows below it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The code"):]
    section = section[:section.find("\n## ", 1)]
    rows = re.findall(r"^\| `([\w.]+/?)`", section, re.M)
    folders = [u for _, units in LAYERS for u in units if not u.endswith(".py")]
    assert [r.rstrip("/") for r in rows if r.endswith("/")] == folders[::-1]
