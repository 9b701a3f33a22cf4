"""The engine's shape: no import cycles, a leaf catalog, families that know nothing above them."""

import ast
from pathlib import Path

from segmentation.inference import catalog

ENGINE = Path(__file__).resolve().parents[2] / "segmentation" / "inference"


def module_name(path: Path) -> str:
    relative = path.relative_to(ENGINE).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def engine_imports() -> dict[str, set[str]]:
    """Every module of the engine -> the engine modules it imports, at any depth in its code
    (imports inside functions count: they are cycles too, only later)."""
    graph = {}
    for path in ENGINE.rglob("*.py"):
        name = module_name(path)
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        package = [] if package == ["__init__"] else package
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if node.module is None:  # from . import x: module x, or a name of the package
                    for alias in node.names:
                        module = ".".join([*base, alias.name])
                        is_module = (ENGINE / f"{module.replace('.', '/')}.py").is_file() or (
                            ENGINE / module.replace(".", "/") / "__init__.py"
                        ).is_file()
                        edges.add(module if is_module else ".".join(base) or "__init__")
                else:
                    edges.add(".".join(target) or "__init__")
            elif isinstance(node, ast.ImportFrom | ast.Import):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                names = [module] if module else [alias.name for alias in node.names]
                for imported in names:
                    if imported and imported.startswith("segmentation.inference"):
                        rest = imported.removeprefix("segmentation.inference").lstrip(".")
                        edges.add(rest or "__init__")
        graph[name] = {e for e in edges if e != name}
    known = set(graph)
    return {m: {e for e in edges if e in known} for m, edges in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_engine_has_no_import_cycles():
    graph = engine_imports()
    assert {"registry", "catalog", "yolo", "maskrcnn", "export"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_catalog_is_a_leaf_and_families_know_nothing_above_them():
    graph = engine_imports()
    assert graph["catalog"] <= {"errors"}
    for spec in catalog.MODELS:
        assert not graph[spec.family] & {"registry", "export", "background", "__init__"}, spec


def test_every_model_names_a_family_module_with_a_family():
    from segmentation.inference.family import Family
    from segmentation.inference.registry import family

    for spec in catalog.MODELS:
        assert (ENGINE / f"{spec.family}.py").is_file()
        assert isinstance(family(spec.name), Family)


def test_the_segmenter_interface_has_no_benchmark_helpers():
    from segmentation.inference.base import Segmenter

    assert not hasattr(Segmenter, "forward")
