"""The engine's shape, checked: the layers and their import directions, no import cycle, short keyword-friendly
signatures, keyword-only command entry points."""
import ast
import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import tinydiff_cli
from tinydiff_cli import cli

PACKAGE = Path(tinydiff_cli.__file__).parent
CLI_HELPERS = {"tinydiff_cli.cli.main", "tinydiff_cli.cli.options", "tinydiff_cli.cli.common", "tinydiff_cli.cli.ui"}
# Bottom to top: a module may import its own layer and those below, never one above. Longest prefix decides.
LAYERS = [
    ("foundation", ["tinydiff_cli", "tinydiff_cli.errors", "tinydiff_cli.io.atomic"]),
    ("math, networks, the machine", ["tinydiff_cli.diffusion", "tinydiff_cli.models", "tinydiff_cli.runtime"]),
    ("config and data", ["tinydiff_cli.config", "tinydiff_cli.data"]),
    ("files", ["tinydiff_cli.io"]),
    ("sampling and evaluation", ["tinydiff_cli.sampling", "tinydiff_cli.evaluation"]),
    ("training", ["tinydiff_cli.training"]),
    ("interfaces", ["tinydiff_cli.cli", "tinydiff_cli.app", "tinydiff_cli.__main__"]),
]


def engine_modules():
    for info in pkgutil.walk_packages(tinydiff_cli.__path__, "tinydiff_cli."):
        if info.name.startswith(("tinydiff_cli.cli", "tinydiff_cli.__main__", "tinydiff_cli.app.streamlit_app")):
            continue
        yield importlib.import_module(info.name)


def module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, known: set[str], parents: bool = True) -> set[str]:
    """The tinydiff_cli modules that `name` imports anywhere in its file (in functions too), with (parents) the
    packages above each, whose __init__ runs first."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    if parents:  # a module's own packages are running already when it runs: no edge to them
        own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
        found = {".".join(t.split(".")[:i]) for t in found for i in range(1, len(t.split(".")) + 1)} - own
    return {t for t in found if t in known and t != name}


def layer_of(name: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if name == prefix or name.startswith(prefix + ".")]
    return max(matches)[1]


def test_every_import_points_down_the_layers_and_none_closes_a_cycle():
    files = module_files()
    named = {name: imports_of(name, path, set(files), parents=False) for name, path in files.items()}
    assert len(named) > 40 and named["tinydiff_cli.training.trainer"] >= {"tinydiff_cli.training.loop",
                                                                         "tinydiff_cli.io.checkpoint"}
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for name, targets in named.items() for target in targets if layer_of(target) > layer_of(name)]
    assert not upward, "\n".join(upward)
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}  # with the packages' __init__
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_layer_check_sees_an_upward_import_and_a_cycle():
    """The check above on made-up modules: a data module that imports training, and two that import each other."""
    known = {"tinydiff_cli", "tinydiff_cli.data", "tinydiff_cli.data.x", "tinydiff_cli.training",
             "tinydiff_cli.training.y", "tinydiff_cli.data.z"}
    source = {"tinydiff_cli.data.x": "from ..training import y\nfrom . import z\n",
              "tinydiff_cli.data.z": "def f():\n    from .x import g\n"}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        graph = {}
        for name, text in source.items():
            path = Path(tmp) / (name.rsplit(".", 1)[1] + ".py")
            path.write_text(text)
            graph[name] = imports_of(name, path, known)
    assert graph["tinydiff_cli.data.x"] == {"tinydiff_cli.training", "tinydiff_cli.training.y", "tinydiff_cli.data.z"}
    assert "tinydiff_cli.data.x" in graph["tinydiff_cli.data.z"]  # the cycle x -> z -> x, through a function's import
    assert layer_of("tinydiff_cli.training.y") > layer_of("tinydiff_cli.data.x")
    assert layer_of("tinydiff_cli.io.atomic") < layer_of("tinydiff_cli.data.folders") < layer_of("tinydiff_cli.io.checkpoint")


def functions_of(module):
    """Functions and methods defined in `module` (not imported into it)."""
    for _, obj in inspect.getmembers(module):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            yield obj.__qualname__, obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for name, member in vars(obj).items():
                member = getattr(member, "__func__", member)
                # model constructors are exempt, and a dataclass's generated __init__ is a record, not a call
                exempt = name == "__init__" and (module.__name__.startswith("tinydiff_cli.models") or dataclasses.is_dataclass(obj))
                if inspect.isfunction(member) and not exempt:
                    yield f"{obj.__qualname__}.{name}", member


def test_no_engine_function_takes_more_than_8_parameters():
    too_long = {}
    for module in engine_modules():
        for name, fn in functions_of(module):
            params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
            if len(params) > 8:
                too_long[f"{module.__name__}.{name}"] = len(params)
    assert not too_long, too_long


def test_command_entry_points_take_keywords_only():
    checked = 0
    for info in pkgutil.iter_modules(cli.__path__, "tinydiff_cli.cli."):
        if info.name in CLI_HELPERS:
            continue
        module = importlib.import_module(info.name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("run_") and fn.__module__ == module.__name__:
                kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
                assert kinds == {inspect.Parameter.KEYWORD_ONLY}, f"{info.name}.{name}"
                checked += 1
    assert checked >= 8  # train, sample, eval, compare, forward, schedule, denoise, export, app


def test_the_math_layer_imports_nothing_above_it():
    """tinydiff_cli.diffusion is plain tensor math: it may import torch, the standard library and itself, never the
    IO, training, CLI or model layers."""
    import ast
    from pathlib import Path

    import tinydiff_cli.diffusion as math_layer

    allowed_top = {"torch", "math", "inspect", "dataclasses", "typing", "__future__"}
    for path in Path(math_layer.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only within the package (one dot)
                    assert node.level == 1, f"{path.name} imports {'.' * node.level}{node.module or ''}"
                else:
                    assert node.module.split(".")[0] in allowed_top, f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed_top, f"{path.name} imports {alias.name}"
