"""The one stage table (deploy/stage_table.py): what gc, MLflow recording, the sweep and
`RunArtifacts.by_stage` read about every stage, and that a misspelled recording fails."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.stage_table import (
    CELL_STAGES,
    COLLECTABLE,
    STAGE_FOLDERS,
    STAGES,
    Recording,
    Stage,
    stage,
)
from distill.store import Artifact, StageManifest


@pytest.mark.parametrize("row", STAGES, ids=lambda row: row.name)
def test_every_field_a_recording_names_exists_on_the_stage_manifest(row: Stage):
    fields = row.manifest_type().model_fields
    recording = row.recording or Recording()
    assert recording.manifest_fields() <= set(fields), recording.manifest_fields() - set(fields)


def test_stage_names_are_unique_and_every_folder_is_collectable():
    assert len(STAGE_FOLDERS) == len(set(STAGE_FOLDERS))
    assert set(COLLECTABLE) == set(STAGE_FOLDERS)
    assert {"logit_shard", "student_data", "student_augment"} <= set(COLLECTABLE)


def test_sweep_cells_are_the_stages_from_the_student_on():
    """A sweep shares everything up to the cache and reruns the student and every stage after it,
    so each of those must be a cell stage, and a grid may vary exactly their sections."""
    assert STAGE_FOLDERS[STAGE_FOLDERS.index("student") :] == CELL_STAGES
    assert CELL_STAGES[:2] == ("student", "evaluation")
    from flows.sweep_grid import SWEEPABLE

    sections = [row.section for row in STAGES if row.sweep_cell and row.section]
    assert tuple(f"{section}." for section in sections) == SWEEPABLE
    assert {"student.", "export.", "quantize."} <= set(SWEEPABLE)


def test_an_unknown_stage_is_named_in_the_error():
    with pytest.raises(KeyError, match="'studnet'.*stage_table"):
        stage("studnet")


class Metrics(StageManifest):
    accuracy: float
    note: str | None = None


def test_a_misspelled_recording_field_fails_instead_of_being_skipped(tmp_path):
    from tasks.stages import field, record_stage

    class Tracker:
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    artifact = Artifact("evaluation", "k", tmp_path, Metrics(accuracy=0.5))
    (tmp_path / "manifest.json").write_text("{}")
    record_stage(Tracker(), artifact, Recording(metrics=("accuracy", "note")))  # None: skipped
    with pytest.raises(AttributeError, match="Metrics has no field 'acuracy'"):
        record_stage(Tracker(), artifact, Recording(metrics=("acuracy",)))
    with pytest.raises(AttributeError, match="'nte'"):
        field(artifact.manifest, "nte")


def test_the_table_check_catches_a_misspelled_field():
    """What test_every_field_a_recording_names_exists_on_the_stage_manifest would report."""
    row = dataclasses.replace(stage("augment"), recording=Recording(metrics=("rowz",)))
    assert row.recording.manifest_fields() - set(row.manifest_type().model_fields) == {"rowz"}


def test_by_stage_follows_the_table_order(tiny_stages):
    assert list(tiny_stages.by_stage()) == [
        name for name in STAGE_FOLDERS if name in tiny_stages.by_stage()
    ]


def test_every_manifest_on_disk_reads_back_as_the_same_json(tiny_stages):
    """The typed records inside manifests (a vocabulary, a gate, candidates, a data source) write
    the JSON the plain dicts they replaced wrote: an unset optional field stays absent."""
    import json

    for artifact in tiny_stages.by_stage().values():
        written = json.loads(artifact.file("manifest.json").read_text())
        typed = artifact.manifest.model_dump(mode="json")
        assert {k: v for k, v in written.items() if k in typed} == typed, artifact.stage


def test_an_unset_optional_field_of_a_record_is_left_out_of_the_json():
    from deploy.quantize import CandidateRecord
    from deploy.vocab_trim import VocabularyRecord

    failed = CandidateRecord(accepted=False, reason="could not be built: X")
    assert failed.model_dump(mode="json") == {"accepted": False, "reason": "could not be built: X"}
    whole = VocabularyRecord(trimmed=False, original_size=30522, reason="no trim")
    assert whole.model_dump(mode="json") == {
        "trimmed": False,
        "original_size": 30522,
        "reason": "no trim",
    }
    assert VocabularyRecord.model_validate(whole.model_dump(mode="json")) == whole
