"""Import boundaries: the ML core and deploy code know nothing of orchestration or tracking, and
the registry and housekeeping commands load no deep-learning framework."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

FORBIDDEN = ("prefect", "mlflow")


@pytest.mark.parametrize(
    "modules",
    [
        "distill.config, distill.data, distill.models, distill.losses, distill.training, "
        "distill.teacher, distill.student, distill.logit_cache, distill.evaluation, "
        "distill.preflight, distill.summary, distill.augment, distill.gates, distill.model_card",
        "deploy.export, deploy.quantize, deploy.onnx_eval, deploy.bundle, deploy.bundle_format, "
        "deploy.runtime, deploy.web, deploy.serve_page, "
        "deploy.server, deploy.selftest, deploy.benchmark, deploy.latency, deploy.optimize, "
        "deploy.vocab_trim",
    ],
)
def test_core_packages_import_neither_prefect_nor_mlflow(modules):
    code = (
        f"import sys; import {modules}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


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
