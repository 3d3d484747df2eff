"""The fault suite's fixtures and its report.

`make faults` runs every test marked `fault_report(name, item)` (here and the few in
tests/test_cli.py and tests/test_serve.py that the suite shares with the fast tests) and, when
all of them ran, writes bench/results/faults.json and the "faults" section of docs/benchmarks.md
from their outcomes: one row per fault name, `{fault, item, detected, recovered, data_lost,
message, seconds}`. A test that calls the `verdict` fixture gives its own three flags and
evidence; any other test's row says whether it passed. Items are issue 11's numbers.
"""

from __future__ import annotations

import pytest

from tests.faults.report import FaultReport
from tests.faults.suite import Suite


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> Suite:
    """The base run on configs/tiny.yaml (a fresh workdir and store), shared by every fault."""
    suite = Suite(tmp_path_factory.mktemp("faults"))
    suite.prepare()
    return suite


@pytest.fixture
def verdict(request):
    """Record a fault's verdict for the report, then fail unless it was handled."""

    def judge(*, detected: bool, recovered: bool, message: str, data_lost: bool = False):
        flags = {"detected": detected, "recovered": recovered, "data_lost": data_lost}
        request.node.user_properties.append(("verdict", {**flags, "message": message}))
        assert detected and recovered and not data_lost, f"{flags}: {message}"

    return judge


def pytest_configure(config: pytest.Config) -> None:
    # A plugin object, not hooks in this conftest: a conftest's hooks only see the items under
    # its folder, and the report also has rows from tests/test_cli.py and tests/test_serve.py.
    if not config.pluginmanager.has_plugin("fault-report"):
        config.pluginmanager.register(FaultReport(), "fault-report")
