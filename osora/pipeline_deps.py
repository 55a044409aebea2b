"""Each DVC stage's code deps, complete by construction: its script and every osora module the
script imports, transitively, and nothing else in osora.

A stage's output is decided by all the code it runs, so a hand-kept deps list that misses a
module (the DiT stages once missed rope.py) lets a change to that module leave stale results
that DVC calls up to date. Here the closure is computed by static analysis (ast: nothing is
imported or run), and `osora dvc-deps --check|--write` (osora/commands/dvc_deps.py) compares it
with dvc.yaml or rewrites dvc.yaml's deps lists; tests/test_pipeline_deps.py guards it.

What counts as importing a module:

- `import osora.a.b`, `from osora.a import b`, relative `from . import b`, wherever they stand:
  imports inside functions decide the output too (osora imports heavy modules lazily);
- every package on the way: importing osora.a.b runs osora/__init__.py and osora/a/__init__.py;
- `from osora.a import b` is osora/a/b.py when b is a submodule, else just osora/a;
- a string that is exactly an osora module's dotted name (docstrings aside): modules run by
  name (`python -m osora.tune.probe_worker`, torchtitan's custom config module, the modules
  `code_fingerprint` hashes);
- not the imports under `if TYPE_CHECKING:`, which never run.

The non-Python files osora reads at run time are in DATA_FILES.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from osora.fileio import atomic_write_text

PACKAGE = "osora"

# Non-Python files inside osora/ that a module reads at run time, per reading module: they are
# part of the closure of every stage that imports the module. Not here, because no osora module
# reads them: osora/eval/prompts/README.md (documentation) and osora/titan/configs/*.toml
# (passed to torchtitan on its command line; no DVC stage runs torchtitan).
DATA_FILES: dict[str, tuple[str, ...]] = {
    # the VBench prompt suite of params/eval.yaml vbench.prompts in the tiny default
    "osora/eval/vbench_suite.py": ("osora/eval/prompts/vbench_excerpt.json",),
}

FIX = "osora dvc-deps --write"


def module_file(root: Path, name: str) -> Path | None:
    """The file that module or package `name` (dotted) runs from under `root`, or None."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes of the module, its classes and functions."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
            and isinstance(node.body[0].value.value, str)}


def _run_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except those under `if TYPE_CHECKING:` (their `else` stays)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _from_base(node: ast.ImportFrom, package: str | None) -> str | None:
    """The absolute module a `from … import` reads from; `package`: the importing file's package
    (None for a script, where a relative import cannot run)."""
    if not node.level:
        return node.module
    if package is None:
        return None
    parts = package.split(".")
    if node.level > len(parts):  # above the top package: an ImportError when run
        return None
    base = parts[:len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(path: Path, package: str | None, prefix: str = PACKAGE) -> set[str]:
    """The dotted names `path` may import: each import's module and, for `from m import x`,
    also m.x (a submodule or a mere name: module_file tells), plus the strings that look like
    a module of `prefix`. `package`: the importing file's package, for relative imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    looks_like_module = re.compile(rf"{re.escape(prefix)}(\.\w+)+")
    names: set[str] = set()
    for node in _run_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (base := _from_base(node, package)):
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in skip and looks_like_module.fullmatch(node.value)):
            names.add(node.value)
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def _with_parents(name: str) -> Iterator[str]:
    """osora.a.b → osora, osora.a, osora.a.b: importing a module runs its packages first."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def _package(root: Path, path: Path, prefix: str) -> str | None:
    """The package a file's relative imports start from; None outside package `prefix` (a
    stage's script)."""
    parts = path.relative_to(root).parts
    return ".".join(parts[:-1]) if parts[0] == prefix else None  # a/__init__.py's too: a


class ImportGraph:
    """Which files of package `prefix` under `root` each file imports, each file parsed once
    for all the stages that run it."""

    def __init__(self, root: Path, prefix: str = PACKAGE,
                 data_files: dict[str, tuple[str, ...]] = DATA_FILES):
        self.root, self.prefix, self.data_files = root, prefix, data_files
        self._direct: dict[Path, set[Path]] = {}

    def direct_imports(self, path: Path) -> set[Path]:
        """The package's files that running `path` imports itself."""
        if path not in self._direct:
            package = _package(self.root, path, self.prefix)
            self._direct[path] = {
                file for name in imported_names(path, package, self.prefix)
                for step in _with_parents(name)
                if (file := module_file(self.root, step)) is not None}
        return self._direct[path]

    def closure(self, start: Iterable[Path]) -> set[str]:
        """The package's files (paths relative to root, posix) that running the files `start`
        imports, transitively, with the data files those modules read; `start` itself only
        where it is part of the package."""
        todo = [Path(p) for p in start]
        seen = {p for p in todo if p.relative_to(self.root).parts[0] == self.prefix}
        while todo:
            for found in self.direct_imports(todo.pop()) - seen:
                seen.add(found)
                todo.append(found)
        files = {p.relative_to(self.root).as_posix() for p in seen}
        return files | {data for f in files for data in self.data_files.get(f, ())}


@dataclass(frozen=True)
class EntryPoints:
    """What a stage's cmd runs: the script dvc.yaml lists first, and the modules run by `-m`."""

    script: str
    modules: tuple[str, ...]


def entry_points(stage: str, cmd: str) -> EntryPoints:
    """The Python script and `-m` modules of `cmd`, e.g. `python -m osora.launch
    pipelines/dit_train.py …` → pipelines/dit_train.py and osora.launch."""
    words = shlex.split(cmd)
    modules = tuple(words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m")
    scripts = [w for w in words if w.endswith(".py")]
    if not scripts:
        raise ValueError(f"dvc.yaml stage {stage}: its cmd {cmd!r} runs no .py script, so its "
                         "code deps cannot be computed; run the stage's work from a script "
                         "in pipelines/")
    return EntryPoints(scripts[0], modules)


def stage_closure(graph: ImportGraph, stage: str, cmd: str) -> set[str]:
    """The package files stage `stage` runs: its script's closure and its `-m` modules'."""
    points = entry_points(stage, cmd)
    start = [graph.root / points.script]
    if not start[0].is_file():
        raise ValueError(f"dvc.yaml stage {stage}: its script {points.script} does not exist")
    for module in points.modules:
        if module.split(".")[0] == graph.prefix:
            if (file := module_file(graph.root, module)) is None:
                raise ValueError(f"dvc.yaml stage {stage}: `-m {module}` names no module "
                                 f"under {graph.root}")
            start.append(file)
    return graph.closure(start)


# --- dvc.yaml ------------------------------------------------------------------------------


def _yaml() -> YAML:
    """Round-trip YAML in dvc.yaml's layout: comments, order and folded commands survive."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    yaml.preserve_quotes = True
    return yaml


def _bodies(doc) -> Iterator[tuple[str, dict]]:
    """(stage name, the mapping with its cmd and deps); a foreach stage's is its `do`."""
    for name, spec in doc["stages"].items():
        yield name, spec["do"] if "foreach" in spec else spec


def _is_code(dep: str, prefix: str = PACKAGE) -> bool:
    return dep == prefix or dep.startswith(prefix + "/")


@dataclass(frozen=True)
class StageDeps:
    """A stage's code deps as dvc.yaml lists them and as its imports require."""

    stage: str
    script: str
    listed: tuple[str, ...]  # the whole deps list
    required: tuple[str, ...]  # the osora files, sorted

    @property
    def missing(self) -> list[str]:
        return [d for d in (self.script, *self.required) if d not in self.listed]

    @property
    def extra(self) -> list[str]:
        return [d for d in self.listed if _is_code(d) and d not in self.required]

    def rewritten(self) -> list[str]:
        """The script, the osora closure, then the other deps as they were."""
        others = [d for d in self.listed if not _is_code(d) and d != self.script]
        return [self.script, *self.required, *others]


def stage_deps(root: Path, doc=None) -> list[StageDeps]:
    """Every stage of `root`/dvc.yaml (or of the loaded `doc`) with its listed and required
    code deps."""
    doc = doc if doc is not None else _yaml().load((root / "dvc.yaml").read_text())
    graph = ImportGraph(root)
    return [StageDeps(name, entry_points(name, body["cmd"]).script,
                      tuple(str(d) for d in body.get("deps") or ()),
                      tuple(sorted(stage_closure(graph, name, body["cmd"]))))
            for name, body in _bodies(doc)]


def write_deps(root: Path) -> list[str]:
    """Rewrite the deps list of every stage of `root`/dvc.yaml whose code deps differ (block
    style, one path a line); the rest of the file is kept as it was. Returns those stages."""
    path = root / "dvc.yaml"
    yaml = _yaml()
    doc = yaml.load(path.read_text())
    bodies = dict(_bodies(doc))
    changed = []
    for deps in stage_deps(root, doc):
        if list(deps.listed) != deps.rewritten():
            seq = CommentedSeq(deps.rewritten())
            seq.fa.set_block_style()
            bodies[deps.stage]["deps"] = seq
            changed.append(deps.stage)
    if changed:
        out = io.StringIO()
        yaml.dump(doc, out)
        atomic_write_text(path, out.getvalue())
    return changed
