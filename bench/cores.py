"""How much parallel compute this machine's cores give: the ceiling for `bench.scale`.

    .venv/bin/python -m bench.cores [--seconds 15] [--no-docs]

A matmul and a student training step, each in one process with one torch thread, one with two,
and two one-thread processes at once. Writes bench/results/cores.json and the "cores" section
of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench import report as bench

WORKLOADS = ("matmul", "train_step")


def _matmul_step():
    import torch

    a, w = torch.randn(256, 384), torch.randn(384, 1536)
    return lambda: a @ w


def _train_step():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=3, hidden_size=384, num_attention_heads=12,
                        intermediate_size=1536, num_labels=2)  # fmt: skip
    model = BertForSequenceClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (32, 64))
    labels = torch.randint(0, 2, (32,))

    def step():
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()

    return step


def worker(workload: str, threads: int, seconds: float) -> float:
    """Steps per second of one workload in this process (after a short warm-up)."""
    import torch

    torch.set_num_threads(threads)
    step = _matmul_step() if workload == "matmul" else _train_step()
    for _ in range(3):
        step()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps / (time.perf_counter() - start)


def _spawn(workload: str, threads: int, seconds: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.cores", "--worker", workload, str(threads)]
    return subprocess.Popen([*command, "--seconds", str(seconds)], stdout=subprocess.PIPE)


def _rates(processes: list[subprocess.Popen]) -> list[float]:
    rates = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"bench.cores worker failed with exit code {process.returncode}")
        rates.append(float(out.decode().split()[-1]))
    return rates


def measure(workload: str, seconds: float) -> dict[str, Any]:
    (one,) = _rates([_spawn(workload, 1, seconds)])
    (two_threads,) = _rates([_spawn(workload, 2, seconds)])
    pair = _rates([_spawn(workload, 1, seconds) for _ in range(2)])  # started together
    return {
        "one_thread": one, "two_threads": two_threads, "two_processes": pair,
        "two_threads_speedup": two_threads / one, "two_processes_speedup": sum(pair) / one,
        "best_sweep_ratio": two_threads / sum(pair),
    }  # fmt: skip


def report(result: dict[str, Any]) -> str:
    rows = [
        [name, f"{r['one_thread']:.3g}",
         f"{r['two_threads']:.3g} ({r['two_threads_speedup']:.2f}x)",
         f"{' + '.join(f'{x:.3g}' for x in r['two_processes'])} "
         f"({r['two_processes_speedup']:.2f}x)", f"{r['best_sweep_ratio']:.2f}"]
        for name, r in result["workloads"].items()
    ]  # fmt: skip
    return bench.section(
        "## How much two cores give (`bench/cores.py`)",
        f"Each cell ran {result['seconds']:.0f} s after a warm-up; the three ways ran one "
        "after another in one invocation. `best parallel/sequential` is the lowest "
        "`parallel_s / sequential_s` that `bench.scale` could show on this machine if the "
        "sweep had no overhead at all (two-thread rate / summed two-process rate).",
        bench.markdown_table(
            "workload (steps/s) | 1 process, 1 thread | 1 process, 2 threads"
            " | 2 processes, 1 thread each | best parallel/sequential",
            rows,
        ),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "THREADS"))
    parser.add_argument("--output", default=str(bench.RESULTS / "cores.json"))
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        print(worker(args.worker[0], int(args.worker[1]), args.seconds), flush=True)
        return {}
    result = {
        "seconds": args.seconds,
        "workloads": {name: measure(name, args.seconds) for name in WORKLOADS},
        "machine": bench.machine(),
    }
    print(json.dumps(result["workloads"], indent=2))
    bench.publish(args.output, result, None if args.no_docs else "cores", lambda: report(result))
    return result


if __name__ == "__main__":
    main()
