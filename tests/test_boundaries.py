"""Import boundaries: the layers (flows > tasks > deploy > distill) and what each may not know.

The contracts live in `pyproject.toml` (`[tool.importlinter]`) and are checked by import-linter
over the source, type-checking imports and function-level imports included: no module imports a
layer above its own, no package has an import circle, neither `distill/` nor `deploy/` imports
Prefect or MLflow, and the edge runtime (`deploy/runtime.py`, `deploy/server.py`, the web page
and the self-test) reaches no torch, transformers, datasets or training code. What a command
loads when it runs (lazy imports) is checked by importing it in a fresh interpreter.
"""

import subprocess
import sys
import tomllib

from tests.conftest import REPO

LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def test_the_import_contracts_hold():
    out = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert {"layers", "acyclic_siblings", "forbidden"} <= {
        contract["type"] for contract in contracts["contracts"]
    }
    for contract in contracts["contracts"]:
        assert f"{contract['name']} KEPT" in out.stdout


def imported_top_levels(modules: str) -> set[str]:
    code = f"import sys; import {modules}; print(','.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in out.stdout.strip().split(",")}


def test_registry_and_gc_commands_import_no_torch():
    # `distillery promote/rollback/lineage/gc` are run by hand and by cron: torch and
    # transformers would add seconds to each (measured: promote 13.2 s -> 6.5 s without them).
    loaded = imported_top_levels(
        "flows.cli, flows.registry_cli, flows.gc, tasks.registry, tasks.tracking"
    )
    assert not loaded & {"torch", "transformers", "prefect"}
