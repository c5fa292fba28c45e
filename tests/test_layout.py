"""The tree shows the architecture: every import between the project's packages runs the allowed way,
and no source file outgrows one noun (300 lines).

    core                   imports nothing else of the project
    protos, kernels        core only
    memory_service         core, protos
    model_client           core, protos, kernels (never memory_service)
    training               core, kernels, model_client (the model it trains; never the service)
    bench                  anything below it, never cli
    cli                    anything

Imports are read from the source (statements at any depth, and the "package.module:Name" strings
that the command line loads lazily), so a lazy import inside a function counts too.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": set(),
    "protos": {"core"},
    "kernels": {"core"},
    "memory_service": {"core", "protos"},
    "model_client": {"core", "protos", "kernels"},
    "training": {"core", "kernels", "model_client"},
    "bench": {"core", "protos", "kernels", "memory_service", "model_client", "training"},
    "cli": {"core", "protos", "kernels", "memory_service", "model_client", "training", "bench"},
}
LAZY_NAME = re.compile(rf"^({'|'.join(ALLOWED)})(\.\w+)+(:\w+)?$")
MAX_LINES = 300


def sources():
    for package in ALLOWED:  # not protoc's output (generated at first import, never committed)
        yield from sorted(p for p in (ROOT / package).rglob("*.py") if "_pb2" not in p.name)


def imported(path: Path) -> set[str]:
    """Top-level project packages that `path` imports, by statement or by lazy-load string."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_NAME.match(node.value):
            found.add(node.value.split(".")[0])
    return found & set(ALLOWED)


def test_imports_run_the_allowed_way():
    wrong = []
    for path in sources():
        package = path.relative_to(ROOT).parts[0]
        for target in sorted(imported(path) - ALLOWED[package] - {package}):
            wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_the_check_sees_lazy_and_string_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from memory_service.store import x\nC = 'bench.e2e:run'\n")
    assert imported(probe) == {"memory_service", "bench"}


def test_no_source_file_is_over_300_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines (split by noun):\n" + "\n".join(long)
