"""The package's import graph, read from the source: every `import` and `from ... import` in every module,
those inside functions included (a lazy import is still an arrow). No module may reach itself, and the folders
are the layers (README "Architecture"): the core `ringtrain/` imports nothing above it; `etl/` and `training/`
import the core and their own folder; `jobs/`, the commands, imports any of them; nothing imports `jobs/`."""
import ast
import os
import shutil

from conftest import ROOT

FOLDERS = {"ringtrain": "ringtrain", "etl": "ringtrain.etl", "training": "ringtrain.training",
           "jobs": "ringtrain.jobs"}  # pyproject.toml
# Folder -> the folders its modules may import (besides their own).
MAY_IMPORT = {"ringtrain": set(), "etl": {"ringtrain"}, "training": {"ringtrain"},
              "jobs": {"ringtrain", "etl", "training"}}


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


def folder_of(module: str) -> str:
    """The repository folder a module's file is in: ringtrain.etl.steps -> etl, ringtrain.store -> ringtrain."""
    parts = module.split(".")
    return next((f for f, package in FOLDERS.items() if package != "ringtrain" and parts[:2] == package.split(".")),
                "ringtrain")


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for every import that leaves the importer's layer for one it may not import."""
    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if folder_of(t) != folder_of(m) and folder_of(t) not in MAY_IMPORT[folder_of(m)])


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {f: {folder_of(t) for m, ts in graph.items() if folder_of(m) == f for t in ts} - {f} for f in FOLDERS}


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
    assert {"ringtrain.jobs.cli", "ringtrain.etl.pipeline", "ringtrain.training.worker",
            "ringtrain.store"} <= set(graph)
    assert circles(graph) == []


def test_the_folders_are_the_layers():
    graph = import_graph(ROOT)
    assert {folder_of(m) for m in graph} == set(FOLDERS)
    assert upward_imports(graph) == []
    assert circles(folder_graph(graph)) == []
    # The arrows the layers allow are there: the check reads real imports.
    assert folder_graph(graph) == {"ringtrain": set(), "etl": {"ringtrain"}, "training": {"ringtrain"},
                                   "jobs": {"ringtrain", "etl", "training"}}


def test_the_check_finds_an_upward_import_hidden_in_a_function(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder)
    with open(tmp_path / "ringtrain" / "config.py", "a") as f:  # the core reaching up to a command
        f.write("\n\ndef planted():\n    from ringtrain.jobs.retrain import retrain\n    return retrain\n")
    with open(tmp_path / "training" / "data.py", "a") as f:  # training reaching sideways into the ETL
        f.write("\n\ndef planted():\n    from ringtrain.etl import shards\n    return shards\n")
    graph = import_graph(str(tmp_path))
    assert upward_imports(graph) == [("ringtrain.config", "ringtrain.jobs.retrain"),
                                     ("ringtrain.training.data", "ringtrain.etl.shards")]
    # The core now reaches jobs, which reaches every folder, each of which reaches the core: one circle.
    assert circles(folder_graph(graph)) == [["etl", "jobs", "ringtrain", "training"]]


def test_the_check_finds_a_circle_hidden_in_a_function(tmp_path):
    for folder in FOLDERS:
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder)
    assert circles(import_graph(str(tmp_path))) == []
    with open(tmp_path / "etl" / "steps.py", "a") as f:  # the shared steps reaching back to the full run
        f.write("\n\ndef planted():\n    from ringtrain.etl.pipeline import run_etl\n    return run_etl\n")
    assert circles(import_graph(str(tmp_path))) == [["ringtrain.etl.incremental", "ringtrain.etl.pipeline",
                                                      "ringtrain.etl.steps"]]
