"""The library's shape: no import cycle, no class over 450 lines, a test module per module."""

import ast
import glob
import os

from tf_codistill import testing

ROOT = testing.repo_root()
PACKAGE = os.path.join(ROOT, "tf_codistill")
MAX_CLASS_LINES = 450
# Modules whose test module is named otherwise (two modules are called criteo).
TEST_MODULE = {
    "tf_codistill.datasets.criteo": "test_criteo_dataset.py",
    "tf_codistill.datasets.imagenet": "test_imagenet_dataset.py",
    "tf_codistill.models.criteo": "test_criteo_model.py",
    # The programs share one test module (their console scripts); each is
    # also tested by its own: test_train_binary, test_tools, test_launch_local.
    "tf_codistill.programs.train": "test_programs.py",
    "tf_codistill.programs.evaluate": "test_programs.py",
    "tf_codistill.programs.churn": "test_programs.py",
    "tf_codistill.programs.launch_local": "test_programs.py",
    "tf_codistill.programs.launch_ray": "test_programs.py",
}


def _modules() -> dict[str, str]:
    """Module name -> file, for every .py file of the package."""
    found = {}
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it (functions too)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                targets.add(name if name in modules else node.module)
    return {t for t in targets if t in modules}


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # The graph must be a DAG: peel off modules that import nothing left.
    remaining = dict(graph)
    while True:
        leaves = {m for m, deps in remaining.items() if not deps & remaining.keys()}
        if not leaves:
            break
        for m in leaves:
            del remaining[m]
    assert not remaining, f"import cycle among {sorted(remaining)}"
    # The graph is the real one: the model sits on the pool, client and losses.
    assert {"tf_codistill.teachers", "tf_codistill.exchange_client"} <= graph[
        "tf_codistill.codistill_model"
    ]


def test_no_class_over_450_lines():
    sizes = {}
    for name, path in _modules().items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                sizes[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    too_long = {k: v for k, v in sizes.items() if v > MAX_CLASS_LINES}
    assert not too_long, too_long
    assert sizes["tf_codistill.codistill_model.CodistillModel"] > 100  # Found what we look for.


def test_every_library_module_has_a_test_module():
    missing = []
    for name, path in _modules().items():
        if path.endswith("__init__.py"):
            continue
        test = TEST_MODULE.get(name, f"test_{name.rsplit('.', 1)[-1]}.py")
        if not os.path.exists(os.path.join(ROOT, "tests", test)):
            missing.append(f"{name}: tests/{test}")
    assert not missing, missing


def test_only_the_ray_launcher_imports_ray():
    # Ray is an optional extra: the core package must import without it.
    importers = set()
    for name, path in _modules().items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(name)
    assert importers == {"tf_codistill.ray_launcher"}, importers


def test_flags_are_defined_by_the_programs_only():
    # The library knows nothing of flags: only tf_codistill/programs/ defines them.
    defining = []
    for name, path in _modules().items():
        if name.startswith("tf_codistill.programs"):
            continue
        with open(path) as f:
            if "flags.DEFINE_" in f.read():
                defining.append(name)
    assert not defining, defining
    programs = {n for n in _modules() if n.startswith("tf_codistill.programs.")}
    for name, path in _modules().items():
        if not name.startswith("tf_codistill.programs"):
            assert not _imports(path, _modules()) & programs, name
