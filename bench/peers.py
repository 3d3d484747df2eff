"""distillery against the recipe users copy from tutorials (issue 23, part 7).

    make setup-peers   # transformers.Trainer needs accelerate
    nice -n 5 .venv/bin/python -m bench.peers [--config configs/movie_reviews.yaml]
        [--store DIR] [key=value ...]

Both start from the same fine-tuned teacher (the config's teacher stage, built or reused in
--store) and the same data, and train the same student (the config's init, alpha, temperature,
epochs, batch size, learning rate, warmup and seed):

- distillery: the teacher's graph exported and gated (`teacher.labelling`), the logit cache
  labelled once, the student trained from it: the stages built in an empty scratch store (a
  first run), then the student alone again from that cache (what every later run with the
  same teacher pays: a new seed, a new student shape);
- the peer: a `transformers.Trainer` subclass whose `compute_loss` runs the teacher on every
  batch, with the same loss, the tutorial way (dynamic padding, the default sampler).

Wall time of each, side by side in one process, and both students' test accuracy with a paired
McNemar test (distillery's student as the candidate). Packaged peers: see PACKAGED.
Writes strong_path.json's `peers` and the benchmarks.md section "peers".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench import report as bench
from deploy.chain import run_until_cache
from distill.chain import run_student
from distill.config import PipelineConfig, load_config
from distill.data import load_split
from distill.models import load_classifier, load_tokenizer
from distill.paired import PairedComparison, compare
from distill.student import init_student
from distill.training import predict_logits

# Why no packaged peer runs beside the hand-written one (checked with `pip install --dry-run`
# against the pinned stack, 2026-12-07).
PACKAGED = {
    "torchdistill 1.1.5": "needs torch >= 2.14 (pip would replace the pinned torch 2.13.0 and add "
    "torchvision and the CUDA wheels): not installable beside the stack",
    "setfit 1.2.0": "installs beside the stack (with sentence-transformers 6.3, accelerate, "
    "evaluate), but its DistillationTrainer distils a SetFit teacher (sentence embeddings and a "
    "head) into a SetFit student through contrastive pairs: it cannot take this fine-tuned "
    "sequence classifier as its teacher, so it is another recipe, not this one done by a package",
}
TITLE = "## distillery vs the hand-written Trainer recipe"
COLUMNS = "recipe | wall seconds | ratio to peer | test accuracy | vs peer (paired)"


def hand_written_trainer(teacher: torch.nn.Module, alpha: float, temperature: float):
    """The recipe as tutorials write it: the teacher runs online inside `compute_loss`."""
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = teacher(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).logits
            hard = F.cross_entropy(outputs.logits, inputs["labels"])
            soft = F.kl_div(
                F.log_softmax(outputs.logits / temperature, dim=-1),
                F.softmax(teacher_logits / temperature, dim=-1),
                reduction="batchmean",
            )
            loss = alpha * hard + (1 - alpha) * temperature**2 * soft
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def run_peer(config: PipelineConfig, upstream, scratch: Path) -> tuple[torch.nn.Module, float]:
    """The peer's student, trained by the hand-written Trainer; its wall seconds."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    started = time.perf_counter()
    teacher = load_classifier(upstream.teacher.path).eval()
    student = init_student(
        config.student, upstream.teacher.path, list(upstream.data.manifest.label_names)
    )
    train = load_split(upstream.data.path, "train").rename_column("label", "labels")
    train = train.select_columns(["input_ids", "attention_mask", "labels"])
    settings = config.student.training
    arguments = TrainingArguments(
        output_dir=str(scratch / "peer"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # a float below 1: a ratio of the steps
        seed=settings.seed,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    trainer_class = hand_written_trainer(teacher, config.student.alpha, config.student.temperature)
    collator = DataCollatorWithPadding(load_tokenizer(upstream.teacher.path))
    trainer = trainer_class(
        model=student, args=arguments, train_dataset=train, data_collator=collator
    )
    trainer.train()
    return student.eval(), time.perf_counter() - started


def scratch_store(config: PipelineConfig, scratch: Path) -> PipelineConfig:
    """An empty store holding only the config's data and teacher (a first run downstream)."""
    upstream = run_until_cache(config, config.store_dir)  # builds or reuses data and teacher
    store = scratch / "store"
    for artifact in (upstream.data, upstream.teacher):
        shutil.copytree(artifact.path, store / artifact.stage / artifact.key)
    return config.model_copy(update={"store": store})


def measure(config: PipelineConfig, scratch: Path) -> dict:
    fresh = scratch_store(config, scratch)
    started = time.perf_counter()
    upstream = run_until_cache(fresh, fresh.store_dir)  # export, gate, label
    cached = time.perf_counter()
    student = run_student(fresh.student, fresh.store_dir, upstream)
    first_run = time.perf_counter() - started
    label_seconds = cached - started
    # The same student again from the cache (a later run): a new store entry, same settings.
    shutil.rmtree(student.path)
    again = time.perf_counter()
    student = run_student(fresh.student, fresh.store_dir, upstream)
    student_seconds = time.perf_counter() - again
    peer, peer_seconds = run_peer(fresh, upstream, scratch)

    test = load_split(upstream.data.path, "test")
    labels = np.asarray(test["label"])
    ours = predict_logits(load_classifier(student.path), test)
    theirs = predict_logits(peer, test)
    paired = compare(theirs, ours, labels)
    recipe = {
        "alpha": fresh.student.alpha,
        "temperature": fresh.student.temperature,
        "epochs": fresh.student.training.epochs,
        "batch_size": fresh.student.training.batch_size,
        "train_rows": sum(upstream.cache.manifest.rows.values()),
        "test_texts": len(labels),
        "labelling": upstream.cache.manifest.labelling_runtime,
    }
    return {
        "config": fresh.name,
        **recipe,
        "rows": [
            {"recipe": "distillery, first run", "seconds": round(first_run, 1)},
            {"recipe": "distillery, cache reused", "seconds": round(student_seconds, 1)},
            {"recipe": "hand-written Trainer", "seconds": round(peer_seconds, 1)},
        ],
        "label_seconds": round(label_seconds, 1),
        "distillery_accuracy": paired.candidate_score,
        "peer_accuracy": paired.reference_score,
        "paired": paired.model_dump(),
        "packaged": PACKAGED,
    }


def render(result: dict) -> str:
    peer = result["rows"][-1]["seconds"]
    paired = PairedComparison.model_validate(result["paired"]).summary()
    accuracy = {"hand-written Trainer": result["peer_accuracy"]}
    rows = [
        [
            row["recipe"],
            f"{row['seconds']:.0f}",
            f"{row['seconds'] / peer:.2f}",
            f"{accuracy.get(row['recipe'], result['distillery_accuracy']):.4f}",
            "" if row["recipe"] in accuracy else paired,
        ]
        for row in result["rows"]
    ]
    more = [
        f"{result['config']}: {result['train_rows']} training rows, {result['epochs']} epochs, "
        f"batch {result['batch_size']}, alpha {result['alpha']}, T {result['temperature']}; "
        f"cache labelled by {result['labelling']} ({result['label_seconds']:.0f} s of the "
        f"first run); {result['test_texts']} test texts",
        "Packaged peers: "
        + "; ".join(f"{name}: {why}" for name, why in result["packaged"].items()),
    ]
    return bench.section(TITLE, bench.markdown_table(COLUMNS, rows), more=more)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = bench.arguments(parser, output=None, section="peers")
    config = load_config(Path(args.config), args.overrides)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch:
        started, load_before = time.time(), os.getloadavg()
        result = measure(config, Path(scratch))
    result |= {
        "machine": bench.machine(),
        "command": bench.command_line(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seconds": round(time.time() - started, 1),
    }
    bench.update_results("strong_path.json", peers=[result])
    if args.section:
        bench.write_section(args.section, render(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
