"""The package's import structure: no import cycle, the layers import downwards only, and ``import convnext`` and
``convnext --help`` stay light (no PyTorch, no task, none of the optional heavy packages)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import convnext

SRC = Path(convnext.__file__).parent.parent

# Layers, lowest first: a module imports its own package and lower layers only. `weights` (checkpoint files, the
# registry of released weights) sits below `models`, whose `create_model` and task heads load weights through it;
# `data` (images in) is beside `models` and imports neither.
LAYERS = {"errors": 0, "files": 1, "plots": 2, "progress": 1, "protocol": 1, "weights": 2, "models": 3, "data": 3,
          "engine": 4, "tasks": 5, "deploy": 6, "cli": 7, "__main__": 8, "": 8}

HEAVY = ("torch", "torchvision", "torchvision.models.detection", "transformers", "openvino", "nncf", "matplotlib",
         "pycocotools", "imagecorruptions", "skimage", "onnx", "onnxruntime", "timm")

COMMANDS = ("models", "info", "demo", "train", "evaluate", "predict", "export", "roadmap", "benchmark", "robustness",
            "segment", "detect", "quantize")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's ``__init__``) for every module of the package."""
    found = {}
    for path in sorted((SRC / "convnext").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _targets(node: ast.AST, name: str, package: str, modules) -> set[str]:
    """The package's modules that one import statement imports: the named module (for ``from X import y`` also
    ``X.y`` when it is a module) and the packages above it, except the importer's own, which are loaded already."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        named = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in named:
        if target not in modules:
            continue
        found.add(target)
        parts = target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if not (name == parent or name.startswith(parent + ".")):
                found.add(parent)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, from every import statement of the source (those inside functions too:
    they run on the first call)."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _targets(node, name, package, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "convnext.cli.common" in graph["convnext.cli.detect"]  # from .common import ...
    assert "convnext.tasks.detection.train" in graph["convnext.cli.detect"]  # inside a function
    assert {"convnext.tasks.detection", "convnext.tasks"} <= graph["convnext.cli.detect"]  # packages run __init__
    assert "convnext.weights" in graph["convnext.weights.segmentation"]  # from . import ...
    assert "convnext.cli.common" in graph["convnext.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_downwards_only():
    wrong = [f"{module} -> {target}" for module, targets in import_graph().items() for target in sorted(targets)
             if _layer(module) != _layer(target) and LAYERS[_layer(target)] >= LAYERS[_layer(module)]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_cli_command_modules_import_only_common():
    """... except `demo`, which gathers the task modules' demos under one command (as the package gathers them)."""
    graph = import_graph()
    tasks = {f"convnext.cli.{name}" for name in ("classify", "segment", "detect", "robustness")}
    for module in graph:
        if module.startswith("convnext.cli.") and module != "convnext.cli.common":
            cli = {t for t in graph[module] if t.startswith("convnext.cli")}
            allowed = {"convnext.cli.common"} | (tasks if module == "convnext.cli.demo" else set())
            assert "convnext.cli.common" in cli and cli <= allowed, (module, cli)
    assert not {t for t in graph["convnext.cli.common"] if t.startswith("convnext.cli")}


def _fresh(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    code += "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_import_convnext_is_light():
    loaded = set(_fresh("import convnext"))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert {m for m in loaded if m.startswith("convnext")} == {"convnext", "convnext.errors"}


def test_every_public_name_loads():
    assert set(convnext.__all__) == set(convnext._LAZY) | {"UserError"}
    for name in convnext.__all__:
        assert getattr(convnext, name) is not None, name
    assert convnext.ROADMAP_STEPS[0].model_name == "roadmap_resnet50" and convnext.UperNet.__name__ == "UperNet"
    assert convnext.models.build_model is convnext.build_model  # subpackages as attributes, as before


def test_help_lists_every_command_and_imports_no_task():
    proc = subprocess.run([sys.executable, "-m", "convnext", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listed = [command for command in COMMANDS if re.search(rf"^    {command}\b", proc.stdout, re.MULTILINE)]
    assert listed == list(COMMANDS), proc.stdout
    loaded = _fresh("import contextlib, io\nfrom convnext.cli import main\n"
                    "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                    "    main(['--help'])")
    assert not [m for m in loaded if m.startswith(("convnext.tasks", "convnext.deploy", "convnext.models"))]
    assert not set(loaded) & set(HEAVY), sorted(set(loaded) & set(HEAVY))
