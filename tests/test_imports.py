"""The package's import graph, read from the source: every `import` and `from ... import` in every module,
those inside functions included (a lazy import is still an arrow). No module may reach itself."""
import ast
import os
import shutil

from conftest import ROOT

FOLDERS = {"ringtrain": "ringtrain", "etl": "ringtrain.etl", "training": "ringtrain.training"}  # pyproject.toml


def module_files(root: str) -> dict[str, str]:
    """Module name -> file, for every module of the installed package (the folders pyproject.toml maps)."""
    found = {}
    for folder, package in FOLDERS.items():
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".py"):
                module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
                found[module] = os.path.join(root, folder, name)
    return found


def import_graph(root: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its file."""
    files = module_files(root)
    graph = {}
    for module, path in files.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        named = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod itself
                named.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
        targets = set()
        for name in named:
            while name and name not in files:  # ringtrain.store.join -> ringtrain.store
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted: every import circle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_module_of_the_package_imports_itself_through_others():
    graph = import_graph(ROOT)
    assert {"ringtrain.cli", "ringtrain.etl.pipeline", "ringtrain.training.worker"} <= set(graph)
    assert circles(graph) == []


def test_the_check_finds_a_circle_hidden_in_a_function(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder)
    assert circles(import_graph(str(tmp_path))) == []
    with open(tmp_path / "etl" / "steps.py", "a") as f:  # the shared steps reaching back to the full run
        f.write("\n\ndef planted():\n    from ringtrain.etl.pipeline import run_etl\n    return run_etl\n")
    assert circles(import_graph(str(tmp_path))) == [["ringtrain.etl.incremental", "ringtrain.etl.pipeline",
                                                      "ringtrain.etl.steps"]]
