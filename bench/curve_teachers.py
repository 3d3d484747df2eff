"""The learning curve's teachers alone: each arm's teacher trained (the same content-addressed
stage a whole run of bench/learning_curve.py builds and later reuses) and scored on the test
split, for when the CPU allows the teachers but not the caches and students behind them.

    .venv/bin/python -m bench.curve_teachers --store /work/lc_store --sizes 2000 --seeds 1 \
        --arms mpnet_after mpnet_today

One JSON line per teacher, and --output (bench/results/curve_teachers.json) rewritten after each;
each validation check is printed as it happens (`"check"` lines), so a run killed mid-teacher
still shows how far its teacher got.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench import learning_curve
from bench import report as bench
from distill.data import data_stage, load_split
from distill.models import load_classifier
from distill.teacher import teacher_stage
from distill.training import predict_logits


def checks(arm: str):
    """A metrics log that prints each validation check as one JSON line."""

    def log(metrics, step: int) -> None:
        if "val_accuracy" in metrics:
            print(json.dumps({"check": arm, "step": step, **metrics}), flush=True)

    return log


def score(arm: str, seed: int, config) -> dict:
    started = time.perf_counter()
    data = data_stage(config.store_dir, config.data, config.teacher.model)
    teacher = teacher_stage(config.store_dir, config.teacher, data, checks(arm))
    test = load_split(data.path, "test")
    logits = predict_logits(load_classifier(teacher.path), test)
    manifest = teacher.manifest
    return {
        "size": data.manifest.sizes["train"],
        "seed": seed,
        "arm": arm,
        "teacher_accuracy": float(np.mean(logits.argmax(-1) == np.asarray(test["label"]))),
        "best_val_accuracy": manifest.best_val_accuracy,
        "teacher_steps": manifest.steps,
        "stop_reason": manifest.stop_reason,
        "history": [
            {k: h[k] for k in ("step", "val_accuracy", "val_loss") if k in h}
            for h in manifest.history
            if "val_accuracy" in h
        ],
        "fine_tune_seconds": manifest.train_seconds,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["2000"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--arms", nargs="+", choices=learning_curve.ORDER, required=True)
    args = bench.arguments(parser, "curve_teachers.json", config=False, argv=argv)
    rows = []
    for _size, seed, arm, config in learning_curve.plan(args):
        rows.append(score(arm, seed, config))
        print(json.dumps(rows[-1]), flush=True)
        bench.write_json(args.output, {"command": bench.command_line(), "rows": rows})


if __name__ == "__main__":
    main()
