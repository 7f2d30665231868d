"""The engine's shape, checked: short keyword-friendly signatures, keyword-only command entry points."""
import dataclasses
import importlib
import inspect
import pkgutil

import tinydiff_cli
from tinydiff_cli import commands

CLI_LAYER = {"tinydiff_cli.cli", "tinydiff_cli.__main__", "tinydiff_cli.app.streamlit_app"}


def engine_modules():
    for info in pkgutil.walk_packages(tinydiff_cli.__path__, "tinydiff_cli."):
        if info.name in CLI_LAYER or info.name.startswith("tinydiff_cli.commands"):
            continue
        yield importlib.import_module(info.name)


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
    for info in pkgutil.iter_modules(commands.__path__, "tinydiff_cli.commands."):
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
