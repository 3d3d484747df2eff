"""What the base run decided and wrote, a rerun of it, a full disk, gc and a deleted registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.suite import REPO, aliases, clean_error, output, versions

pytestmark = pytest.mark.faults


@pytest.mark.fault_report("teacher_at_chance_not_promoted", "1")
def test_teacher_at_chance_not_promoted(suite, verdict):
    summary = suite.base_summary
    failed = [gate["name"] for gate in summary.get("gates", []) if not gate["passed"]]
    verdict(
        detected=summary["teacher_accuracy"] <= 0.55 and any("baseline" in n for n in failed),
        recovered=summary.get("alias") != "champion" and not aliases(suite.base).get("champion"),
        message=f"teacher accuracy {summary['teacher_accuracy']:.2f}; failed gates {failed}; "
        f"alias {summary.get('alias')}",
    )


@pytest.mark.fault_report("unchanged_rerun_idempotent", "2")
def test_unchanged_rerun_idempotent(suite, verdict):
    before_versions, before_aliases = len(versions(suite.base)), aliases(suite.base)
    result = suite.run(suite.base)
    assert result.returncode == 0, output(result)[-300:]
    after = json.loads((suite.base / "summary.json").read_text())
    same = after["model_version"] == suite.base_summary["model_version"]
    verdict(
        detected=same and len(versions(suite.base)) == before_versions,
        recovered=aliases(suite.base) == before_aliases,
        data_lost=not (suite.base / "bundle" / "manifest.json").is_file(),
        message=f"rerun: version {after['model_version']} (was "
        f"{suite.base_summary['model_version']}), {len(versions(suite.base))} versions, "
        f"aliases {aliases(suite.base)}",
    )


@pytest.mark.fault_report("minority_collapse_macro_f1", "3")
def test_minority_collapse_macro_f1(verdict):
    """13% positives and a model that gave up on them (always negative): accuracy 0.87 looks
    fine, macro-F1 0.47 does not. Judged by the real gates with promotion.metric=macro_f1."""
    from distill.config import PromotionConfig
    from distill.gates import Measurements, all_passed, evaluate_gates, majority_baseline, score
    from tasks.registry import mlflow_check

    test, train = [1] * 13 + [0] * 87, [1] * 130 + [0] * 870
    collapsed = [0] * 100
    measured = Measurements(
        retention=1.0,
        latency_ms=1.0,
        score=score("macro_f1", test, collapsed, 2),
        baseline_score=majority_baseline("macro_f1", train, test, 2),
    )
    results = evaluate_gates(PromotionConfig(metric="macro_f1"), measured, mlflow_check)
    failed = [r.name for r in results if not r.passed]
    verdict(
        detected=not all_passed(results),
        recovered=any("macro_f1" in r.name for r in results),
        message=f"accuracy {score('accuracy', test, collapsed, 2):.2f}, macro-F1 "
        f"{measured.score:.3f}: failed gates {failed}",
    )


@pytest.mark.fault_report("vocab_trim_cost_gated", "4")
def test_vocab_trim_cost_gated(suite, verdict):
    """The shipped model is compared with the trained student, trimming and INT8 together."""
    quantize = json.loads((suite.stage_dir(suite.store, "quantize") / "manifest.json").read_text())
    export = json.loads((suite.stage_dir(suite.store, "export") / "manifest.json").read_text())
    costs = quantize.get("validation_costs", {})  # what the gate decides on
    gate = quantize.get("gate", {})
    end_to_end = gate.get("reference", "").startswith("trained student")
    recorded = {"trimming", "quantization", "end_to_end"} <= set(costs) and (
        "student_validation_accuracy" in export
    )
    within = costs.get("end_to_end", 1.0) <= gate.get("max_accuracy_drop", 0.0) + 1e-9
    verdict(
        detected=end_to_end,
        recovered=end_to_end and recorded and within,
        message=f"gate reference {gate.get('reference')!r}, costs {costs}",
    )


@pytest.mark.fault_report("progress_lines", "18")
def test_progress_lines(suite, verdict):
    lines = [ln for ln in suite.base_output.splitlines() if " epoch " in ln and "ETA" in ln]
    first = lines[0].split(" - ", 1)[-1] if lines else "no epoch lines"
    verdict(detected=bool(lines), recovered=bool(lines), message=first[:200])


@pytest.mark.fault_report("disk_full_store", "25.8")
def test_disk_full_store(suite, verdict):
    """The store on a 3 MB tmpfs: the first stage that does not fit fails as one line naming
    the store, is not retried, and leaves no half-written folder."""
    workdir, _ = suite.fresh("disk_full_store")
    store = workdir / "store"
    store.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(store)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.strip()}")
    try:
        result = suite.run(workdir, store=store)
        ok, line = clean_error(result, "no space left", str(store))
        retried = output(result).count("Retry") + output(result).count("retry")
        debris = [p.name for p in store.glob("*/*") if p.name.startswith(".tmp-")]
        unfinished = [
            f"{p.parent.name}/{p.name}"
            for p in store.glob("*/*")
            if p.is_dir() and not p.name.startswith(".") and not (p / "manifest.json").is_file()
        ]
    finally:
        subprocess.run(["umount", str(store)], capture_output=True)
    verdict(
        detected=ok and not retried,
        recovered=not debris and not unfinished,
        message=f"{line}; retries {retried}, tmp folders left {debris}, unfinished folders "
        f"{unfinished}",
    )


@pytest.mark.fault_report("workdir_growth_gc", "19, 25.5", last=True)
def test_workdir_growth_gc(suite, verdict):
    """Late: it collects what the other faults' runs left in the shared store."""
    student = suite.stage_dir(suite.store, "student")
    unused = student.with_name("0" * 16)  # a variant no run or version uses
    shutil.copytree(student, unused)
    corrupt = student.with_name(".corrupt-x-1")
    shutil.copytree(student, corrupt)
    # Folders of the stage kinds gc once never collected: a shard, re-tokenized data and
    # student-side augmentation, none used by a kept run.
    data = suite.stage_dir(suite.store, "data")
    others = [suite.store / kind / ("1" * 16) for kind in ("logit_shard", "student_data")]
    others.append(suite.store / "student_augment" / ("2" * 16))
    for folder in others:
        shutil.copytree(data, folder)
    summary = json.loads((suite.base / "summary.json").read_text())
    keep = ("--keep-runs", "1", "--keep-days", "0")
    result = suite.cli("gc", "--workdir", suite.base, "--store", suite.store, *keep, timeout=180)
    lost = [name for name, info in summary["stages"].items() if not Path(info["path"]).is_dir()]
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    verdict(
        detected=result.returncode == 0 and "freed" in last,
        recovered=not any(p.exists() for p in (unused, corrupt, *others)),
        data_lost=bool(lost),
        message=f"{last}; kept stages lost: {lost}",
    )


@pytest.mark.fault_report("mlflow_db_deleted", "9", last=True)
def test_mlflow_db_deleted(suite, verdict):
    """Last: it deletes the base workdir's registry."""
    record = json.loads((suite.base / "registry.json").read_text())
    (suite.base / "mlflow.db").unlink()
    ok, line = clean_error(suite.run(suite.base), "registry")
    # Asked in a fresh process: this one's cached SQLite engine still reads the deleted file.
    code = f"from tests.faults.suite import versions; print(len(versions({str(suite.base)!r})))"
    fresh = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=suite.env(), capture_output=True, text=True
    )
    verdict(
        detected=ok,
        recovered=fresh.stdout.strip().splitlines()[-1:] == ["0"],
        data_lost=not (suite.base / "bundle" / "manifest.json").is_file()
        or not (suite.base / "registry.json").is_file(),
        message=f"{line} (registry.json remembered v{record['registries'][0]['highest_version']})",
    )
