"""bf16 autocast against fp32 for student (or teacher) training on this CPU (issue 23, part 2).

    nice -n 5 .venv/bin/python -m bench.precision [--config configs/movie_reviews.yaml]
        [--model student|teacher] [--rounds 24] [--steps 2] [--store DIR] [key=value ...]

`training.precision: auto` stays fp32 on a CPU unless this benchmark, run on that CPU, shows
bf16 faster and its accuracy within noise. It reports what torch says of the CPU (AVX512-BF16,
AMX tiles: the units that make bf16 fast; without them bf16 is emulated), then trains two copies
of the config's student (or, `--model teacher`, its teacher before fine-tuning) from the same
start on the same batches, fp32 and bf16 autocast, in alternating blocks of `--steps` optimizer
steps (`--rounds` blocks each, the order rotating), and gives each precision's seconds per step.
Only when bf16 is faster does the accuracy check run: both copies trained on `--accuracy-steps`
more steps, validation accuracy paired (McNemar). "Faster" is decided as the pipeline decides on
speed (`deploy.latency.paired_speed`): the blocks of one round are a pair (same batches), and
bf16 is faster only when the whole interval of the median time ratio lies below 1.
Writes strong_path.json's `precision` (`precision_teacher`), a row per torch CPU capability, and
the benchmarks.md section "precision-<capability>" ("precision-teacher-<capability>").
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
from deploy.latency import SpeedComparison, paired_speed
from distill.batching import collate, length_grouped_batches
from distill.config import TrainingConfig, load_config
from distill.data import data_stage, load_split
from distill.devices import CPU_BF16_PROBES, Runtime
from distill.losses import LossTerms, hard_label_ce
from distill.paired import PairedComparison, compare
from distill.store import Artifact
from distill.student import init_student, student_tokenizer_model
from distill.teacher import starting_teacher, teacher_stage
from distill.training import Optimisation, predict_logits

TITLE = "## bf16 autocast against fp32, {model} training on the CPU (precision)"


def cpu_bf16_units() -> dict[str, bool]:
    """What torch reports of the CPU's bf16 hardware: the probes `auto` precision reads
    (`distill.devices.CPU_BF16_PROBES`), by unit name (avx512_bf16, amx_tile)."""
    return {
        probe.removeprefix("_is_").removesuffix("_supported"): bool(
            getattr(torch.cpu, probe, lambda: False)()
        )
        for probe in CPU_BF16_PROBES
    }


def labels_loss(model, batch) -> LossTerms:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = hard_label_ce(logits, batch["label"])
    return LossTerms(total=loss, parts={"ce": loss})


def starting_point(config, which: str) -> tuple[torch.nn.Module, TrainingConfig, Artifact]:
    """The untrained model (`which`: the student, carved as its stage carves it from the
    fine-tuned teacher, or the teacher from its checkpoint), its training settings and the data
    in its token ids."""
    store = config.store_dir
    teacher_data = data_stage(store, config.data, config.teacher.model)
    labels = list(teacher_data.manifest.label_names)
    if which == "teacher":
        start, _ = starting_teacher(config.teacher, labels, teacher_data.manifest)
        return start, config.teacher.training, teacher_data
    teacher = teacher_stage(store, config.teacher, teacher_data)  # built or reused
    data = data_stage(
        store, config.data, student_tokenizer_model(config.student, config.teacher.model)
    )
    return init_student(config.student, teacher.path, labels), config.student.training, data


def trainers(start, settings: TrainingConfig, total_steps: int) -> dict[str, tuple]:
    """Two copies of one start: (model, optimisation) per precision."""
    result = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(start).train()
        runtime = Runtime(torch.device("cpu"), precision)
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
    start, settings, data = starting_point(config, args.model)
    train = load_split(data.path, "train")
    rng = np.random.default_rng(settings.seed)
    size = settings.batch_size
    needed = args.rounds * args.steps + args.accuracy_steps
    lengths = [len(ids) for ids in train["input_ids"]]
    grouped = length_grouped_batches(lengths, size, rng)  # as student training batches
    batches = [collate(train, indices) for indices in grouped[:needed]]
    pair = trainers(start, settings, needed)
    per_step = timed_blocks(pair, batches[: args.rounds * args.steps], args.rounds, args.steps)
    seconds = {name: statistics.median(values) for name, values in per_step.items()}
    # Decided as the pipeline decides on speed: paired blocks (same batches, same round), faster
    # only when the whole interval of the median time ratio says so.
    speed = paired_speed(per_step["bf16"], per_step["fp32"])
    row = {
        "model": args.model,
        "cpu_bf16_units": cpu_bf16_units(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "batch_size": size,
        "rounds": args.rounds,
        "steps_per_block": args.steps,
        "seconds_per_step": per_step,
        "median_seconds_per_step": seconds,
        "bf16_speedup": 1.0 / speed.median_ratio,
        "speed": speed.model_dump(),
    }
    faster = speed.faster_by(0.0)
    if not faster and not args.accuracy:
        row["accuracy"] = "not measured: bf16 is not significantly faster here"
        row["verdict"] = "fp32 (auto keeps fp32 on this CPU)"
        return row
    rest = batches[args.rounds * args.steps : needed]
    for model, optimisation in pair.values():
        for batch in rest:
            optimisation.apply(model, labels_loss, batch)
    validation = load_split(data.path, "validation")
    labels = np.asarray(validation["label"])
    logits = {
        name: predict_logits(model, validation, runtime=Runtime(torch.device("cpu"), name))
        for name, (model, _) in pair.items()
    }
    paired = compare(logits["fp32"], logits["bf16"], labels)
    row["accuracy"] = paired.model_dump()
    within_noise = not paired.significantly_worse()
    row["verdict"] = (
        "bf16 pays here"
        if faster and within_noise
        else "fp32: "
        + ("bf16 significantly worse" if faster else "bf16 is not significantly faster here")
    )
    return row


def accuracy_line(accuracy: str | dict) -> str:
    """The paired check's one line (a string: why it did not run)."""
    if isinstance(accuracy, str):
        return accuracy
    return PairedComparison.model_validate(accuracy).summary()


def speed_line(row: dict) -> str:
    """The paired time ratio's line (rows measured before it was recorded: the medians')."""
    if "speed" not in row:
        return "ratio of medians, no interval"
    return SpeedComparison.model_validate(row["speed"]).summary().replace("calls", "blocks")


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
        f"bf16 speed-up {row['bf16_speedup']:.2f}x (bf16/fp32 {speed_line(row)}); accuracy: "
        f"{accuracy_line(row['accuracy'])}; verdict: {row['verdict']}",
    ]
    return bench.section(TITLE.format(model=row.get("model", "student")), table, more=more)


def per_cpu(key: str, row: dict) -> dict:
    """strong_path.json's `key`: one row per torch CPU capability measured (the answer differs
    between CPUs), this row replacing that capability's earlier one."""
    recorded = bench.read_results("strong_path.json").get(key, {})
    if "cpu_capability" in recorded:  # written before rows were kept per CPU
        recorded = {recorded["cpu_capability"]: recorded}
    return recorded | {row["cpu_capability"]: row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("student", "teacher"), default="student")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--accuracy-steps", type=int, default=200)
    parser.add_argument("--accuracy", action="store_true", help="check accuracy even if slower")
    args = bench.arguments(parser, output=None, section="precision")
    config = load_config(Path(args.config), args.overrides)
    load_before = os.getloadavg()
    row = measure(args, config)
    row |= {"machine": bench.machine(), "command": bench.command_line()}
    row |= {"load_before": load_before, "load_after": os.getloadavg()}
    key = "precision" if args.model == "student" else "precision_teacher"
    bench.update_results("strong_path.json", **{key: per_cpu(key, row)})
    if args.section:
        name = args.section if args.model == "student" else f"{args.section}-teacher"
        bench.write_section(f"{name}-{row['cpu_capability'].lower()}", render(row))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
