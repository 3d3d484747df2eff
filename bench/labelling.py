"""Teacher labelling throughput: PyTorch vs the teacher's ONNX graph, fp32 and dynamic INT8.

    nice -n 10 .venv/bin/python -m bench.labelling [--texts 2000] [--threads 2] [--scratch DIR]
        [--fine-tuned STORE/teacher/KEY] [--section NAME]

Teachers through the pipeline's stages (data, teacher, teacher_onnx): MPNet-base with a fresh
seeded head (speed only: its figures are an untrained head's) and MiniLM fine-tuned one epoch
(figures of a trained head). Each labels the first `--texts` train texts in batches of 32, the
runtimes interleaved batch by batch. On a CPU where `training.precision: auto` is bf16
(`distill.devices.fast_cpu_bf16`), PyTorch under bf16 autocast runs too (`torch-bf16`: what a
`torch` cache is labelled with there), its figures against fp32 PyTorch judged by the INT8
gate. `--fine-tuned STORE/teacher/KEY` adds a fine-tuned teacher stage labelling its
validation split with the graphs its run built (stages of the same store): every runtime's
speed, and its figures against fp32 PyTorch on a trained head. Writes strong_path.json's
`labelling`, benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import (
    machine,
    markdown_table,
    section,
    update_results,
    write_section,
)
from deploy.labelling import judged
from deploy.onnx_eval import open_session
from deploy.teacher_onnx import OnnxLabeller, interleaved, sample_feeds, teacher_onnx_stage
from distill import models
from distill.batching import sorted_batches
from distill.config import load_config
from distill.data import data_stage, load_split
from distill.devices import CPU, Runtime, fast_cpu_bf16
from distill.labelling import GATES, INT8_GATE, TorchLabeller, parity_figures
from distill.teacher import teacher_stage

RUNTIMES = ("torch", "onnx", "onnx-int8")
BF16 = "torch-bf16"  # PyTorch under bf16 autocast: measured only where auto precision picks it
PROFILE = Path("configs/movie_reviews.yaml")
MPNET_NOTE = "pretrained body, fresh seeded head (not fine-tuned): speed only"
SPEED = "{texts_per_second:.1f} ({ratio_to_torch:.2f}x)"
FIGURES = "{max_abs_logit_diff:.2g} / {agreement:.4f} / {mean_kl:.2g}"
TITLE = "## Teacher labelling: PyTorch vs ONNX Runtime (batch 32)"
COLUMNS = (
    "teacher | texts | torch texts/s | onnx texts/s | onnx-int8 texts/s | torch-bf16 texts/s"
    " | onnx: max diff / agreement / KL | int8: max diff / agreement / KL"
    " | torch-bf16: max diff / agreement / KL"
)


def seeded_mpnet(data, folder: Path) -> str:
    """MPNet-base with a fresh seeded head, saved as a classifier (the teacher stage keeps it)."""
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        source = models.resolve_model_source("mpnet")
        model = models.pretrained_classifier(source, list(data.manifest.label_names))
        models.save_classifier(model, models.load_tokenizer(source), folder)
    return str(folder)


def torch_labellers(model) -> dict:
    """fp32 PyTorch (the reference), and bf16 where auto precision picks it."""
    labellers = {"torch": TorchLabeller(model)}
    if fast_cpu_bf16():
        labellers[BF16] = TorchLabeller(model, Runtime(CPU.device, "bf16"))
    return labellers


def speed(rt: str, seconds: dict[str, list[float]], texts: int) -> dict:
    spent = sum(seconds[rt])
    return {"texts_per_second": texts / spent, "ratio_to_torch": sum(seconds["torch"]) / spent}


def measure(name: str, overrides: list[str], args, note: str) -> dict:
    config = load_config(PROFILE, [*overrides, f"teacher.model={name}"])
    data = data_stage(config.store_dir, config.data, config.teacher.model)
    if name == "mpnet":  # the seeded classifier folder is the teacher (tokenizer: MPNet's)
        folder = seeded_mpnet(data, Path(args.scratch) / "mpnet-seeded")
        config = load_config(PROFILE, [*overrides, f"teacher.model={folder}"])
        data = data_stage(config.store_dir, config.data, config.teacher.model)
    teacher = teacher_stage(config.store_dir, config.teacher, data)
    graphs = {r: teacher_onnx_stage(config.store_dir, teacher, data, r) for r in RUNTIMES[1:]}
    model = models.load_classifier(teacher.path)
    sessions = {rt: open_session(g.file(g.manifest.file), args.threads) for rt, g in graphs.items()}
    labellers = torch_labellers(model) | {r: OnnxLabeller(s) for r, s in sessions.items()}
    rows = load_split(data.path, "train").select(range(args.texts))
    batches = sorted_batches([len(ids) for ids in rows["input_ids"]], 32)
    feeds = sample_feeds(rows, batches, models.pad_token_id(model.config), len(batches))
    seconds, logits = interleaved(labellers, feeds)
    reference, temperature = np.concatenate(logits["torch"]), config.student.temperature
    result = {"teacher": name, "note": note, "texts": len(rows), "threads": args.threads}
    for rt in labellers:
        entry = speed(rt, seconds, len(rows))
        if rt != "torch":
            figures = parity_figures(rt, reference, np.concatenate(logits[rt]), temperature)
            entry |= figures.model_dump(include={"max_abs_logit_diff", "agreement", "mean_kl"})
        if rt in graphs:
            gate = judged(graphs[rt], GATES[rt], temperature)  # on the validation split
            entry |= {"validation_gate": gate.reason, "fusion": graphs[rt].manifest.fusion_reason}
        if rt == BF16:  # no graph stage: judged on these texts, by the INT8 gate's bounds
            entry |= {"int8_gate_on_these_texts": INT8_GATE.judge(figures).reason}
        result[rt] = entry
    return result


def stages_of(store: Path, stage: str) -> list[tuple[Path, dict]]:
    """Every finished folder of `stage` in `store`, with its manifest."""
    manifests = sorted((store / stage).glob("*/manifest.json"))
    return [(path.parent, json.loads(path.read_text())) for path in manifests]


def measure_fine_tuned(teacher: Path, args) -> dict:
    """A fine-tuned teacher stage on its validation split, every runtime interleaved: its
    data and teacher graphs are the stages of the same store that belong to it."""
    store, manifest = teacher.parent.parent, json.loads((teacher / "manifest.json").read_text())
    (data,) = [
        f for f, m in stages_of(store, "data") if m["fingerprint"] == manifest["data_fingerprint"]
    ]
    graphs = {
        m["runtime"]: folder / m["file"]
        for folder, m in stages_of(store, "teacher_onnx")
        if m["teacher_sha256"] == manifest["weights_sha256"]
    }
    model = models.load_classifier(teacher)
    labellers = torch_labellers(model)
    labellers |= {rt: OnnxLabeller(open_session(graphs[rt], args.threads)) for rt in RUNTIMES[1:]}
    rows = load_split(data, "validation")
    batches = sorted_batches([len(ids) for ids in rows["input_ids"]], 32)
    feeds = sample_feeds(rows, batches, models.pad_token_id(model.config), len(batches))
    seconds, logits = interleaved(labellers, feeds)
    reference = np.concatenate(logits["torch"])
    temperature = load_config(PROFILE).student.temperature
    truth = np.asarray(rows["label"])[np.concatenate(batches)]
    result = {"teacher": f"{Path(manifest['source']).name}, fine-tuned", "folder": str(teacher)}
    result |= {"texts": len(rows), "note": "validation split", "threads": args.threads}
    for rt in labellers:
        candidate = np.concatenate(logits[rt])
        entry = speed(rt, seconds, len(rows))
        entry["validation_accuracy"] = float(np.mean(candidate.argmax(-1) == truth))
        if rt != "torch":
            figures = parity_figures(rt, reference, candidate, temperature)
            entry |= figures.model_dump(include={"max_abs_logit_diff", "agreement", "mean_kl"})
            gate = GATES.get(rt, INT8_GATE)  # torch-bf16 has no gate of its own: INT8's bounds
            entry["gate"] = gate.judge(figures).reason
        result[rt] = entry
    return result


def cells(row: dict) -> list[str]:
    runtimes = (*RUNTIMES, BF16)
    speeds = [SPEED.format(**row[r]) if r in row else "not run" for r in runtimes]
    figures = [FIGURES.format(**row[r]) if r in row else "" for r in runtimes[1:]]
    return [row["teacher"], str(row["texts"]), *speeds, *figures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minilm-examples", type=int, default=3000)
    parser.add_argument("--scratch", default="/tmp/bench-labelling")
    parser.add_argument("--fine-tuned", type=Path, help="a fine-tuned teacher's stage folder")
    # Another name keeps an earlier machine's results: it names the JSON key and the section.
    parser.add_argument("--section", default="labelling", help="results key and docs section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HOME", str(Path(args.scratch) / "hf"))
    base = [f"workdir={args.scratch}/work", "teacher.training.epochs=1"]
    started, load_before = time.time(), os.getloadavg()
    minilm = f"fine-tuned 1 epoch on the train split of {args.minilm_examples} texts"
    rows = [
        measure("mpnet", [*base, "data.max_examples=3000"], args, MPNET_NOTE),
        measure("minilm", [*base, f"data.max_examples={args.minilm_examples}"], args, minilm),
    ]
    if args.fine_tuned:
        rows.append(measure_fine_tuned(args.fine_tuned, args))
    meta = dict(machine=machine(), load_before=load_before, load_after=os.getloadavg())
    meta["seconds"] = time.time() - started
    update_results("strong_path.json", **{args.section: [row | meta for row in rows]})
    loads = f"Load average before/after: {load_before[0]:.1f} / {meta['load_after'][0]:.1f}"
    table = markdown_table(COLUMNS, [cells(row) for row in rows])
    title = TITLE if args.section == "labelling" else f"{TITLE} ({args.section})"
    write_section(args.section, section(title, table, more=[loads]))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
