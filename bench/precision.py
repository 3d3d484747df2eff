"""bf16 autocast against fp32 for student training on this CPU (issue 23, part 2).

    nice -n 5 .venv/bin/python -m bench.precision [--config configs/movie_reviews.yaml]
        [--rounds 6] [--steps 8] [--store DIR] [key=value ...]

`training.precision: auto` stays fp32 on a CPU unless this benchmark, run on that CPU, shows
bf16 faster and its accuracy within noise. It reports what torch says of the CPU (AVX512-BF16,
AMX tiles: the units that make bf16 fast; without them bf16 is emulated), then trains two copies
of the config's student from the same start on the same batches, fp32 and bf16 autocast, in
alternating blocks of `--steps` optimizer steps (`--rounds` blocks each, the order rotating), and
gives each precision's seconds per step. Only when bf16 is faster does the accuracy check run:
both copies trained on `--accuracy-steps` more steps, validation accuracy paired (McNemar).
Writes strong_path.json's `precision`, the benchmarks.md section "precision".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench import report as bench
from distill.batching import collate, length_grouped_batches
from distill.chain import run_until_cache
from distill.config import load_config
from distill.data import load_split
from distill.devices import Runtime
from distill.losses import LossTerms, hard_label_ce
from distill.paired import PairedComparison, compare
from distill.student import init_student
from distill.training import Optimisation, predict_logits

TITLE = "## bf16 autocast against fp32, student training on the CPU (precision)"


def cpu_bf16_units() -> dict[str, bool]:
    """What torch reports of the CPU's bf16 hardware (private probes, hence guarded)."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    return {
        name: bool(getattr(torch.cpu, probe, lambda: False)()) for name, probe in probes.items()
    }


def labels_loss(model, batch) -> LossTerms:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = hard_label_ce(logits, batch["label"])
    return LossTerms(total=loss, parts={"ce": loss})


def trainers(config, upstream, total_steps: int) -> dict[str, tuple]:
    """Two copies of the student from one start: (model, optimisation) per precision."""
    start = init_student(
        config.student, upstream.teacher.path, list(upstream.data.manifest.label_names)
    )
    result = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(start).train()
        runtime = Runtime(torch.device("cpu"), precision)
        settings = config.student.training
        result[precision] = (model, Optimisation.create(model, settings, total_steps, runtime))
    return result


def timed_blocks(pair: dict, batches: list, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each precision, block by block, the same batches, order rotating."""
    per_step: dict[str, list[float]] = {name: [] for name in pair}
    names = list(pair)
    for number in range(rounds):
        block = batches[number * steps : (number + 1) * steps]
        for name in names[number % 2 :] + names[: number % 2]:
            model, optimisation = pair[name]
            started = time.perf_counter()
            for batch in block:
                optimisation.apply(model, labels_loss, batch)
            per_step[name].append((time.perf_counter() - started) / len(block))
    return per_step


def measure(args, config) -> dict:
    upstream = run_until_cache(config, config.store_dir)  # data and teacher (built or reused)
    train = load_split(upstream.data.path, "train")
    rng = np.random.default_rng(config.student.training.seed)
    size = config.student.training.batch_size
    needed = args.rounds * args.steps + args.accuracy_steps
    lengths = [len(ids) for ids in train["input_ids"]]
    grouped = length_grouped_batches(lengths, size, rng)  # as student training batches
    batches = [collate(train, indices) for indices in grouped[:needed]]
    pair = trainers(config, upstream, needed)
    per_step = timed_blocks(pair, batches[: args.rounds * args.steps], args.rounds, args.steps)
    seconds = {name: statistics.median(values) for name, values in per_step.items()}
    row = {
        "cpu_bf16_units": cpu_bf16_units(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch_size": size,
        "rounds": args.rounds,
        "steps_per_block": args.steps,
        "seconds_per_step": per_step,
        "median_seconds_per_step": seconds,
        "bf16_speedup": seconds["fp32"] / seconds["bf16"],
    }
    if row["bf16_speedup"] <= 1.0 and not args.accuracy:
        row["accuracy"] = "not measured: bf16 is not faster here"
        row["verdict"] = "fp32 (auto keeps fp32 on this CPU)"
        return row
    rest = batches[args.rounds * args.steps : needed]
    for model, optimisation in pair.values():
        for batch in rest:
            optimisation.apply(model, labels_loss, batch)
    validation = load_split(upstream.data.path, "validation")
    labels = np.asarray(validation["label"])
    logits = {
        name: predict_logits(model, validation, runtime=Runtime(torch.device("cpu"), name))
        for name, (model, _) in pair.items()
    }
    paired = compare(logits["fp32"], logits["bf16"], labels)
    row["accuracy"] = paired.model_dump()
    within_noise = not paired.significantly_worse()
    faster = row["bf16_speedup"] > 1.0
    row["verdict"] = (
        "bf16 pays here"
        if faster and within_noise
        else "fp32: " + ("bf16 significantly worse" if faster else "bf16 is not faster here")
    )
    return row


def accuracy_line(accuracy: str | dict) -> str:
    """The paired check's one line (a string: why it did not run)."""
    if isinstance(accuracy, str):
        return accuracy
    return PairedComparison.model_validate(accuracy).summary()


def render(row: dict) -> str:
    seconds = row["median_seconds_per_step"]
    cells = [[name, f"{value * 1000:.0f}"] for name, value in seconds.items()]
    table = bench.markdown_table("precision | median ms per optimizer step", cells)
    units = ", ".join(
        f"{name} {'yes' if on else 'no'}" for name, on in row["cpu_bf16_units"].items()
    )
    more = [
        f"torch CPU capability {row['cpu_capability']}; bf16 units: {units}; batch "
        f"{row['batch_size']}, {row['rounds']} blocks of {row['steps_per_block']} steps each",
        f"bf16 speed-up {row['bf16_speedup']:.2f}x; accuracy: {accuracy_line(row['accuracy'])}; "
        f"verdict: {row['verdict']}",
    ]
    return bench.section(TITLE, table, more=more)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--accuracy-steps", type=int, default=200)
    parser.add_argument("--accuracy", action="store_true", help="check accuracy even if slower")
    args = bench.arguments(parser, output=None, section="precision")
    config = load_config(Path(args.config), args.overrides)
    load_before = os.getloadavg()
    row = measure(args, config)
    row |= {"machine": bench.machine(), "command": bench.command_line()}
    row |= {"load_before": load_before, "load_after": os.getloadavg()}
    bench.update_results("strong_path.json", precision=row)
    if args.section:
        bench.write_section(args.section, render(row))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
