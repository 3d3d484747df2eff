"""Dirty or changed data files, read by the data stage in this process."""

from __future__ import annotations

import json
import os

import pytest

from tests.faults.suite import data_stage, review_rows, write_csv

pytestmark = pytest.mark.faults


def flipped(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(text, "pos" if label == "neg" else "neg") for text, label in rows]


def fault(name: str, item: str, dirty, words: tuple[str, ...]):
    return pytest.param(dirty, words, id=name, marks=pytest.mark.fault_report(name, item))


@pytest.mark.parametrize(
    ("dirty", "words"),
    [
        fault("train_test_leakage", "5", lambda rows: rows + rows[:60], ("leak", "duplicate")),
        fault("conflicting_duplicates", "5", lambda rows: rows + flipped(rows[:10]), ("conflict",)),
    ],
)
def test_repeated_texts_are_named_and_kept_out_of_test(suite, verdict, request, dirty, words):
    """120 texts with some repeated (same or other label): refused, or recorded in the data
    manifest with no text in both train and test."""
    from distill.data import load_split

    workdir, _ = suite.fresh(request.node.callspec.id)
    data = write_csv(workdir / "dirty.csv", dirty(review_rows(120)))
    try:
        stage = data_stage(workdir / "store", data)
    except ValueError as err:
        named = any(word in str(err).lower() for word in words)
        verdict(detected=named, recovered=named, message=str(err)[:300])
        return
    manifest = json.dumps(stage.manifest.model_dump(mode="json")).lower()
    named = any(word in manifest for word in words)
    shared = set(load_split(stage.path, "train")["text"]) & set(
        load_split(stage.path, "test")["text"]
    )
    verdict(
        detected=named,
        recovered=named and not shared,
        message=f"{len(shared)} test texts also in train; the manifest names it: {named}",
    )


@pytest.mark.fault_report("label_names_changed", "10")
def test_label_names_changed(suite, verdict):
    """The same file, its labels renamed in place (0/1 -> neg/pos)."""
    workdir, _ = suite.fresh("label_names_changed")
    path = workdir / "labels.csv"
    write_csv(path, review_rows(120, ("0", "1")))
    first = data_stage(workdir / "store", path)
    write_csv(path, review_rows(120, ("neg", "pos")))
    second = data_stage(workdir / "store", path)
    verdict(
        detected=first.manifest.fingerprint != second.manifest.fingerprint,
        recovered=second.manifest.label_names == ["neg", "pos"] and first.key != second.key,
        message=f"labels {first.manifest.label_names} -> {second.manifest.label_names}: "
        f"fingerprints {first.manifest.fingerprint} / {second.manifest.fingerprint}, data keys "
        f"{'differ' if first.key != second.key else 'equal (stale stages reused)'}",
    )


@pytest.mark.fault_report("stale_mtime_data_change", "25.1-2")
def test_stale_mtime_data_change(suite, verdict):
    """A file relabelled under its old mtime (cp -p, rsync -a, tar), then touched."""
    workdir, _ = suite.fresh("stale_mtime_data_change")
    path = workdir / "good.csv"
    rows = review_rows(120)
    write_csv(path, rows)
    first = data_stage(workdir / "store", path)
    old = path.stat()
    write_csv(path, [(text, "meh" if i < 20 else label) for i, (text, label) in enumerate(rows)])
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    second = data_stage(workdir / "store", path)
    path.touch()
    third = data_stage(workdir / "store", path)
    fresh = data_stage(workdir / "fresh-store", path)
    labels = [stage.manifest.label_names for stage in (first, second, third, fresh)]
    verdict(
        detected=second.key != first.key and len(second.manifest.label_names) == 3,
        recovered=third.reused and third.manifest.fingerprint == fresh.manifest.fingerprint,
        message=f"labels read: first {labels[0]}, relabelled under the old mtime {labels[1]}, "
        f"touched {labels[2]} (reused {third.reused}), fresh store {labels[3]}",
    )
