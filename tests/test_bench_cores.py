"""bench/cores.py: the workloads run, and the ceiling it reports is the ratio of the rates."""

from __future__ import annotations

from bench import cores


def test_each_workload_reports_a_positive_rate():
    for workload in cores.WORKLOADS:
        assert cores.worker(workload, threads=1, seconds=0.2) > 0


def test_the_sweep_ceiling_is_the_two_thread_rate_over_both_processes(monkeypatch):
    rates = iter([[10.0], [15.0], [8.0, 7.0]])
    monkeypatch.setattr(cores, "_spawn", lambda *args: None)
    monkeypatch.setattr(cores, "_rates", lambda processes: next(rates))
    measured = cores.measure("matmul", seconds=1)
    assert measured["two_threads_speedup"] == 1.5
    assert measured["two_processes_speedup"] == 1.5
    assert measured["best_sweep_ratio"] == 1.0
    text = cores.report({"seconds": 1, "workloads": {"matmul": measured}})
    assert "| matmul | 10 | 15 (1.50x) | 8 + 7 (1.50x) | 1.00 |" in text
