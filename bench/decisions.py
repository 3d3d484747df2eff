"""Decisions benchmark: the old point-estimate rules against the paired rules (`distill.paired`)
for the trimming, INT8 and champion gates, each decision's stability over 1,000 bootstrap
resamples of the deciding split (a multinomial draw of the discordant counts), and each seed's
bundle size over the teacher's fp32 weights.

    .venv/bin/python -m bench.decisions [--seeds 1 2 3] [key=value ...]

Writes bench/results/decisions.json and the "decisions" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import report as bench
from deploy.bundle import bundle_bytes, bundle_from_stages
from deploy.chain import run_pipeline_stages
from deploy.export import trimming_rejection
from deploy.onnx_eval import onnx_logits, open_session
from deploy.quantize import Measured, rejection, shipped_split
from distill.config import load_config
from distill.data import load_split
from distill.gates import champion_decision, two_sided_p
from distill.paired import PairedComparison, compare, mcnemar_p_values

RESAMPLES = 1000
SEED = 0
Rule = Callable[[int, int, int], str]  # (n, b, c) -> decision


def counts_comparison(n: int, b: int, c: int) -> PairedComparison:
    """A comparison from discordant counts alone (no interval: the rules never read it)."""
    p_worse, p_better = mcnemar_p_values(b, c)
    return PairedComparison(
        metric="accuracy", n=n, reference_score=0.0, candidate_score=(c - b) / n,
        difference=(c - b) / n, only_reference_right=b, only_candidate_right=c,
        interval=(float("nan"), float("nan")), p_worse=p_worse, p_better=p_better,
        method="exact McNemar",
    )  # fmt: skip


def gate_rules(
    refused: Callable[[int, int, int, PairedComparison | None], object],
) -> tuple[Rule, Rule]:
    """(old, new) decision of a compression gate, "ship" or "refuse": `refused(n, b, c,
    comparison)` on the point estimate alone (no comparison), and with the paired comparison."""

    def old(n: int, b: int, c: int) -> str:
        return "refuse" if refused(n, b, c, None) else "ship"

    def new(n: int, b: int, c: int) -> str:
        return "refuse" if refused(n, b, c, counts_comparison(n, b, c)) else "ship"

    return old, new


def compression_rules(budget: float) -> tuple[Rule, Rule]:
    """The gate of a trim or an INT8 candidate on accuracy, from the candidate's discordant
    counts against the trained student."""
    return gate_rules(lambda n, b, c, paired: trimming_rejection((b - c) / n, budget, paired))


def int8_rules(budget: float) -> tuple[Rule, Rule]:
    """Like `compression_rules`, through the quantize stage's own `rejection` (agreement and
    latency held at passing values, so only accuracy decides)."""
    fp32 = Measured("fp32", 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1)

    def refused(n: int, b: int, c: int, paired: PairedComparison | None) -> object:
        candidate = Measured("candidate", 1.0 - (b - c) / n, 1.0, 0.0, 1.0, 1.0, 1.0, 1)
        return rejection(candidate, fp32, budget, 0.0, True, 1.0, paired)

    return gate_rules(refused)


def champion_rules(min_improvement: float, on_tie: str, data_changed: bool) -> tuple[Rule, Rule]:
    """(old, new) champion gate on the challenger's discordant counts against the champion:
    "promote" or "keep"."""

    def old(n: int, b: int, c: int) -> str:
        return "promote" if (c - b) / n >= min_improvement - 1e-9 else "keep"

    def new(n: int, b: int, c: int) -> str:
        comparison = counts_comparison(n, b, c)
        passed, _ = champion_decision(comparison, min_improvement, on_tie, data_changed)  # type: ignore[arg-type]
        return "promote" if passed else "keep"

    return old, new


def stability(
    rule: Rule, n: int, b: int, c: int, resamples: int = RESAMPLES, seed: int = SEED
) -> float:
    """Share of bootstrap resamples of the n texts on which `rule` decides as on all of them."""
    whole = rule(n, b, c)
    rest = n - b - c
    drawn = np.random.default_rng(seed).multinomial(n, [b / n, c / n, rest / n], size=resamples)
    same = sum(rule(n, int(row[0]), int(row[1])) == whole for row in drawn)
    return same / resamples


def gate_row(gate: str, seed: int, rules: tuple[Rule, Rule], comparison: PairedComparison,
             p_value: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One gate's decisions; `p_value`: the one-sided p of a cost unless given."""
    old, new = rules
    n, b, c = comparison.n, comparison.only_reference_right, comparison.only_candidate_right
    return {
        "gate": gate, "seed": seed, "old_decision": old(n, b, c), "new_decision": new(n, b, c),
        "old_stability": stability(old, n, b, c), "new_stability": stability(new, n, b, c),
        "difference": comparison.difference, "interval": list(comparison.interval),
        "p_value": comparison.p_worse if p_value is None else p_value, "texts": n,
        "only_reference_right": b, "only_candidate_right": c,
    }  # fmt: skip


def shipped_test_predictions(artifacts) -> np.ndarray:
    quantized = artifacts.quantize
    split = shipped_split(quantized, artifacts.student_data, "test")
    session = open_session(quantized.file(quantized.manifest.file))
    return onnx_logits(session, split["input_ids"], split["attention_mask"]).argmax(-1)


def bundle_size(artifacts) -> int:
    """The edge bundle's size as the pipeline builds it (no tarball)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = bundle_from_stages(Path(tmp), artifacts, "bench", "0", tarball=False)
        return bundle_bytes(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = bench.arguments(parser, "decisions.json", section="decisions")

    gates: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    seconds: dict[str, dict[str, float]] = {}
    shipped: dict[int, np.ndarray] = {}
    first = args.seeds[0]
    for seed in args.seeds:
        config = load_config(args.config, [*args.overrides, f"student.training.seed={seed}"])
        runner = bench.timing_runner(seconds.setdefault(str(seed), {}))
        artifacts = run_pipeline_stages(config, config.store_dir, runner)
        budget = config.quantize.max_accuracy_drop
        trim, quantized = artifacts.export.manifest.trimming_comparison, artifacts.quantize.manifest
        if trim is not None:
            gates.append(gate_row("trimming", seed, compression_rules(budget), trim))
        for name, record in quantized.candidates.items():
            comparison = record.validation_comparison
            if "/" not in name and name != "fp32" and comparison is not None:  # the first trial's
                gates.append(gate_row(f"int8/{name}", seed, int8_rules(budget), comparison))
        teacher_bytes, size = artifacts.teacher.manifest.weights_bytes, bundle_size(artifacts)
        cost = None if trim is None else -trim.difference
        ratios.append(
            {"seed": seed, "bundle_bytes": size, "teacher_fp32_bytes": teacher_bytes,
             "ratio": size / teacher_bytes, "trimmed": quantized.trimmed,
             "method": quantized.method, "trimming_cost": cost}
        )  # fmt: skip
        shipped[seed] = shipped_test_predictions(artifacts)
        if seed != first:  # a challenger of the first seed's model, on the same texts
            labels = np.asarray(load_split(artifacts.data.path, "test")["label"])
            comparison = compare(shipped[first], shipped[seed], labels)
            rules = champion_rules(config.promotion.min_improvement, config.promotion.on_tie, False)
            gate = f"champion (challenger of seed {first})"
            gates.append(gate_row(gate, seed, rules, comparison, two_sided_p(comparison)))
        timed = [{**row, "stage_seconds": seconds[str(row["seed"])]} for row in ratios]
        bench.write_json(args.output, {"gates": gates, "bundle_ratio": timed})  # after each seed
    if args.section:
        bench.write_section(args.section, report(gates, ratios))


def report(gates: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    gate_rows = [
        [row["gate"], str(row["seed"]),
         f"{row['difference']:+.4f} [{row['interval'][0]:+.4f}, {row['interval'][1]:+.4f}]",
         f"{row['only_reference_right']} / {row['only_candidate_right']} of {row['texts']}",
         f"{row['p_value']:.3g}", f"{row['old_decision']} ({row['old_stability']:.2f})",
         f"{row['new_decision']} ({row['new_stability']:.2f})"]
        for row in gates
    ]  # fmt: skip
    ratio_rows = [
        [str(row["seed"]), f"{row['bundle_bytes'] / 1e6:.1f} MB", f"{row['ratio']:.3f}",
         "yes" if row["trimmed"] else "no", row["method"]]
        for row in ratios
    ]  # fmt: skip
    return bench.section(
        "## Decisions on evidence: old rule against paired rule",
        "Difference: candidate minus reference accuracy (trimmed graph or INT8 candidate "
        "against the trained student on validation; challenger against champion on test), "
        "95% paired bootstrap interval. Discordant: texts only the reference / only the "
        "candidate gets right. p: one-sided exact McNemar p of a cost (compression gates), "
        "two-sided for the champion gate. Stability: share of 1,000 bootstrap resamples of "
        "the deciding split with the same decision.",
        bench.markdown_table(
            ["gate", "seed", "difference [95% CI]", "discordant", "p", "old rule", "new rule"],
            gate_rows,
        ),
        bench.markdown_table(
            ["seed", "bundle", "bundle / teacher fp32", "trimmed", "method"], ratio_rows
        ),
    )


if __name__ == "__main__":
    main()
