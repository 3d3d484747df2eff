"""The fault report's rows, from test outcomes (a fast test: not part of the fault suite)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.faults.report import fault_rows


def item(nodeid: str, name: str, number: str = "7"):
    mark = pytest.mark.fault_report(name, number).mark
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda _: mark)


def report(nodeid: str, outcome: str = "passed", when: str = "call", **extra):
    return pytest.TestReport(
        nodeid, ("x.py", 1, nodeid), {}, outcome, extra.pop("longrepr", None), when, **extra
    )


def test_a_passing_test_is_a_handled_row_naming_the_test():
    (row,) = fault_rows([item("t.py::test_a", "a")], {"t.py::test_a": [report("t.py::test_a")]})
    assert row == {
        "fault": "a",
        "item": "7",
        "detected": True,
        "recovered": True,
        "data_lost": False,
        "message": "t.py::test_a passed",
        "seconds": 0.0,
    }


def test_a_verdict_gives_the_flags_and_the_evidence():
    given = {"detected": True, "recovered": False, "data_lost": True, "message": "lost 3 files"}
    phases = [report("t::b", "failed", user_properties=[("verdict", given)], duration=2.25)]
    (row,) = fault_rows([item("t::b", "b")], {"t::b": phases})
    assert (row["detected"], row["recovered"], row["data_lost"]) == (True, False, True)
    assert row["message"] == "lost 3 files" and row["seconds"] == 2.2


def test_a_fault_over_several_cases_is_handled_only_when_every_case_passes():
    items = [item(f"t.py::test_c[{i}]", "c") for i in range(3)] + [item("t.py::test_d", "d")]
    reports = {i.nodeid: [report(i.nodeid)] for i in items}
    reports["t.py::test_c[1]"] = [report("t.py::test_c[1]", "failed", longrepr="boom")]
    rows = fault_rows(items, reports)
    assert [row["fault"] for row in rows] == ["c", "d"]
    assert not rows[0]["detected"] and not rows[0]["recovered"]
    assert rows[0]["message"].startswith(
        "t.py::test_c: 2 of 3 cases passed; t.py::test_c[1] failed"
    )
    assert rows[1]["detected"] and rows[1]["recovered"]


def test_a_skipped_fault_is_not_handled_and_says_why():
    skipped = report("t::e", "skipped", "setup", longrepr=("t.py", 3, "Skipped: needs root"))
    (row,) = fault_rows([item("t::e", "e")], {"t::e": [skipped]})
    assert not row["detected"] and row["message"] == "skipped: Skipped: needs root"
