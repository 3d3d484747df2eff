"""The fault report: bench/results/faults.json and the "faults" section of docs/benchmarks.md,
from the outcomes of the tests marked `fault_report(name, item)` (registered by
tests/faults/conftest.py)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

MARKER = "fault_report"
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.json"


class FaultReport:
    """Collects every test's reports; at the end, writes the report if every test marked
    `fault_report` ran: none deselected (-m, -k), no paths named, not interrupted."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.reports: dict[str, list[pytest.TestReport]] = defaultdict(list)
        self.rows_left_out = 0

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Faults that change the base workdir for good (`last=True`) run after the others."""
        items.sort(key=lambda item: _marker(item).kwargs.get("last", False) if _marker(item) else 0)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.rows_left_out += sum(_marker(item) is not None for item in items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports[report.nodeid].append(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        items = [item for item in session.items if _marker(item)]
        whole = not session.config.option.file_or_dir and not self.rows_left_out
        ran = all(self.reports.get(item.nodeid) for item in items)
        if items and whole and ran and exitstatus != pytest.ExitCode.INTERRUPTED:
            write_report(fault_rows(items, self.reports), time.monotonic() - self.started)


def _marker(item: pytest.Item) -> pytest.Mark | None:
    return item.get_closest_marker(MARKER)


def fault_rows(items: list[pytest.Item], reports: dict[str, list[pytest.TestReport]]) -> list:
    """One row per fault name, in the order the tests ran; a fault spread over several tests
    (parametrized cases) is handled when every one of them is."""
    cases: dict[str, list[dict]] = defaultdict(list)
    numbers: dict[str, str] = {}
    for item in items:
        name, number = _marker(item).args
        numbers[name] = number
        cases[name].append(_case(item.nodeid, reports[item.nodeid]))
    rows = []
    for name, found in cases.items():
        if len(found) == 1:
            message = found[0]["message"]
        else:
            failed = [case["message"] for case in found if not case["passed"]]
            tests = ", ".join(dict.fromkeys(case["nodeid"].split("[")[0] for case in found))
            passed = f"{len(found) - len(failed)} of {len(found)} cases passed"
            message = "; ".join([f"{tests}: {passed}", *failed])
        rows.append(
            {
                "fault": name,
                "item": numbers[name],
                "detected": all(case["detected"] for case in found),
                "recovered": all(case["recovered"] for case in found),
                "data_lost": any(case["data_lost"] for case in found),
                "message": message[:300],
                "seconds": round(sum(case["seconds"] for case in found), 1),
            }
        )
    return rows


def _case(nodeid: str, phases: list[pytest.TestReport]) -> dict:
    """What one test showed: its own verdict if it gave one, else whether it passed."""
    seconds = sum(report.duration for report in phases if report.when == "call")
    passed = all(report.passed for report in phases)
    given = [
        value for report in phases for key, value in report.user_properties if key == "verdict"
    ]
    if given:
        return {"nodeid": nodeid, "passed": passed, "seconds": seconds, **given[-1]}
    bad = next((report for report in phases if not report.passed), None)
    if bad is None:
        message = f"{nodeid} passed"
    elif bad.skipped:
        message = f"skipped: {bad.longrepr[-1] if isinstance(bad.longrepr, tuple) else ''}"
    else:
        crash = getattr(bad.longrepr, "reprcrash", None)
        message = f"{nodeid} failed: {crash.message if crash else bad.longreprtext[-200:]}"
    flags = {"detected": passed, "recovered": passed, "data_lost": False}
    return {"nodeid": nodeid, "passed": passed, "seconds": seconds, "message": message, **flags}


def write_report(rows: list[dict], seconds: float) -> None:
    from bench.report import machine, markdown_table, write_section

    good = sum(r["detected"] and r["recovered"] and not r["data_lost"] for r in rows)
    payload = {"faults": len(rows), "handled": good, "seconds": round(seconds, 1), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    yes = lambda flag: "yes" if flag else "**no**"  # noqa: E731
    table = markdown_table(
        ["fault", "item", "detected", "recovered", "data lost", "message", "s"],
        [
            [
                r["fault"],
                r["item"],
                yes(r["detected"]),
                yes(r["recovered"]),
                "**yes**" if r["data_lost"] else "no",
                r["message"].replace("|", "\\|").replace("\n", " ")[:220],
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    info = machine()
    write_section(
        "faults",
        "## Fault suite (`tests/faults/`)\n\n"
        "Command: `make faults` (`pytest -m fault_report -p no:xdist`)  \n"
        f"Date: {time.strftime('%Y-%m-%d')}  \n"
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cpu_flags']}), "
        f"torch {info['torch']} with {info['torch_threads']} threads\n\n"
        f"{good} of {len(rows)} faults detected and recovered with no data lost, in "
        f"{seconds / 60:.1f} min. Items are issue 11's numbers (- : not numbered there). Each "
        "row is a test marked `fault_report`: its verdict is judged by code from exit codes, "
        "output, files and the MLflow store, and the message is the check's own evidence (or, "
        "for a fault the fast suite already checks, the test that checks it).\n\n" + table,
    )
