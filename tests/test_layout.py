"""The repository's import graph: rooms that import only downwards, and no circle.

From the bottom up: the floor (the modules directly under ``utils/``: errors, checkpoint
I/O, logging, distributed, provenance, the losses and schedules; and the config, a package on
the floor), the data (``dataset/``), the networks (``model/``), then the rooms of ``utils/``:
evaluation, analysis, training, and last the scripts and benchmarks. A module imports from its
own level or below; ``model/`` and ``dataset/`` import only the floor (and themselves), and
``utils/losses.py`` and ``utils/schedules.py`` nothing of the repository at all.

And every entry point (a module run as ``__main__``, or a package's ``__main__.py``) answers
``--help`` on stdout with exit status 0: the usage line first, ``--debug``, the commands of its
docstring exactly as written in the source, the exit statuses where its docstring lists them,
and ``--resume`` where it is a training script.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "dataset", "model", "benchmarks")
LEVELS = {  # module prefix -> level; the longest matching prefix wins
    "utils": 0,
    "dataset": 1,
    "model": 2,
    "utils.evaluation": 3,
    "utils.analysis": 4,
    "utils.training": 5,
    "benchmarks": 6,
}
SCRIPT_LEVEL = 6  # the top-level scripts
FLOOR_PACKAGES = ("config",)  # the subpackages of utils/ that are the floor, not a room
STANDALONE = ("utils.losses", "utils.schedules")


def _modules() -> dict[str, Path]:
    files = [*ROOT.glob("*.py"), *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))]
    out = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The repository modules ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # ``from pkg import module`` names a module; ``from module import name`` its module
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _level(name: str) -> int:
    best = max((p for p in LEVELS if name == p or name.startswith(p + ".")), key=len, default=None)
    return SCRIPT_LEVEL if best is None else LEVELS[best]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    for name, deps in graph.items():  # a package's __init__ is not a dependency of its modules
        graph[name] = {d for d in deps if not (name.startswith(d + ".") and d in PACKAGES)}
    return graph


def test_every_import_runs_down_to_its_own_level_or_below():
    upward = [
        f"{name} (level {_level(name)}) imports {dep} (level {_level(dep)})"
        for name, deps in _graph().items()
        for dep in sorted(deps)
        if _level(dep) > _level(name)
    ]
    assert upward == []


def test_the_model_and_the_data_import_only_the_floor_and_themselves():
    foreign = {
        name: sorted(d for d in deps if _level(d) > 0 and d.split(".")[0] != name.split(".")[0])
        for name, deps in _graph().items()
        if name.split(".")[0] in ("model", "dataset")
    }
    assert {name: deps for name, deps in foreign.items() if deps} == {}


def test_the_config_knows_the_class_sets_of_the_labels():
    """The config (the floor) names the reported class sets without importing the labels."""
    from dataset.labels import CLASS_SUBSETS, NUM_CLASSES
    from utils.config import EVAL_CLASSES

    assert tuple(CLASS_SUBSETS) == EVAL_CLASSES and EVAL_CLASSES[0] == NUM_CLASSES


def test_the_losses_and_schedules_import_nothing_of_the_repository():
    graph = _graph()
    assert {name: graph[name] for name in STANDALONE} == {name: set() for name in STANDALONE}


def test_the_import_graph_has_no_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                circles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_every_module_of_utils_is_on_the_floor_or_in_a_room():
    """The files directly under utils/ and the floor's packages (the config) are the floor;
    every other subpackage is a room with a level of its own (a new one must be given its
    place above)."""
    utils = {n: p.relative_to(ROOT / "utils").parts for n, p in _modules().items()
             if n.startswith("utils.")}  # fmt: skip
    floor = [n for n, parts in utils.items() if len(parts) == 1 or parts[0] in FLOOR_PACKAGES]
    rooms = {parts[0] for parts in utils.values() if len(parts) > 1} - set(FLOOR_PACKAGES)
    assert "utils.config" in floor and all(_level(n) == 0 for n in floor)
    assert rooms == {"evaluation", "analysis", "training"}
    assert all(_level(f"utils.{room}") > 0 for room in rooms)


def _entry_points() -> list[str]:
    """Every module with a ``main`` run as a script: ``if __name__ == "__main__":`` in it, or
    a ``__main__.py`` beside it in its package."""
    found = []
    for name, path in _modules().items():
        if path.name == "__main__.py":
            found.append(name.rpartition(".")[0])
        elif 'if __name__ == "__main__":' in path.read_text():
            found.append(name)
    return sorted(found)


def _commands(path: Path) -> list[list[str]]:
    """The commands of the module docstring as written in the source (escapes unread): each a
    line starting with ``python`` or ``torchrun`` and the lines a trailing ``\\`` continues
    it with."""
    tree = ast.parse(path.read_text())
    doc = tree.body[0]
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), path
    lines = path.read_text().splitlines()[doc.lineno - 1 : doc.end_lineno]
    commands = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("python ", "torchrun ")):
            end = i
            while lines[end].endswith(" \\") and end + 1 < len(lines):
                end += 1
            commands.append(lines[i : end + 1])
    return commands


def _exit_statuses(path: Path) -> list[str]:
    """The lines of the module docstring that start its "Exit status:" paragraph (if any)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return [line for line in doc.splitlines() if line.startswith("Exit status")]


def _is_training_script(name: str) -> bool:
    """Whether ``name`` is built on the shared training command line (``utils.training.cli``)."""
    modules = _modules()
    return "utils.training.cli" in _imports(modules[name], name, modules)


def test_the_entry_points_are_found():
    entries = _entry_points()
    assert {"train_clan_norm", "predict", "benchmarks.speed", "dataset.synthetic"} <= set(entries)
    assert {"utils.analysis.compare_iou", "utils.protocols"} <= set(entries)
    # and the kinds the help test checks more of: the training scripts, the exit statuses
    training = {name for name in entries if _is_training_script(name)}
    assert training == {name for name in entries if name.startswith("train_")}
    assert {"train_norm_only", "train_clan_norm"} <= training
    assert _exit_statuses(_modules()["predict"])


@pytest.mark.parametrize("name", _entry_points())
def test_help_prints_the_docstring_commands_as_written(name, capsys):
    """A backslash continuation in a docstring that is not raw is eaten by Python, so two
    lines of an example print as one; a description cut short leaves them out."""
    module = importlib.import_module(name)
    path = _modules()[name]
    commands = _commands(path)
    assert commands, f"{name}: no python or torchrun command in its docstring"
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == ""  # argparse prints --help on stdout
    assert out.startswith("usage: ") and "--debug" in out  # every entry point takes --debug
    missing = ["\n".join(lines) for lines in commands if "\n".join(lines) not in out]
    assert missing == []
    assert [line for line in _exit_statuses(path) if line not in out] == []
    if _is_training_script(name):
        assert "--resume RUN_DIR_OR_CKPT" in out
