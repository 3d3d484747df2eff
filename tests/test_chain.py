"""The one stage wiring (distill.chain, deploy.chain) that the flow, bench/ and tests share."""

from deploy.stage_table import STAGE_FOLDERS
from distill.chain import run_student, run_until_cache


def recording_runner(calls: list[str]):
    def run(stage, build):
        calls.append(stage)
        return build(None)

    return run


def test_augmentation_is_wired_whenever_the_config_turns_it_on(tiny_config):
    config = tiny_config.model_copy(
        update={"augmentation": tiny_config.augmentation.model_copy(update={"multiplier": 0.5})}
    )
    calls: list[str] = []
    upstream = run_until_cache(config, config.store_dir, recording_runner(calls))
    assert calls == ["data", "teacher", "augment", "logit_cache"]
    assert upstream.augmented is not None
    rows = upstream.cache.manifest.rows
    assert rows["augmented"] == upstream.augmented.manifest.rows == 140
    assert upstream.cache.manifest.augmented_fingerprint == upstream.augmented.manifest.fingerprint

    calls.clear()
    plain = run_until_cache(tiny_config, tiny_config.store_dir, recording_runner(calls))
    assert calls == ["data", "teacher", "logit_cache"] and plain.augmented is None
    assert plain.cache.key != upstream.cache.key and plain.teacher.key == upstream.teacher.key


def test_run_artifacts_list_the_stages_in_pipeline_order(tiny_stages, tiny_config):
    # Every stage of the table runs, in its order, except those a plain run has no use for: no
    # augmentation, one shard (the cache itself), a student sharing the teacher's tokenizer,
    # PyTorch labelling (no teacher graph; the cache tags the graph it used) in fp32 (no bf16
    # check), one teacher (no ensemble cache). A new stage the wiring forgets fails here.
    optional = {"augment", "logit_shard", "student_data", "student_augment", "teacher_onnx"}
    optional |= {"teacher_precision"}
    optional |= {"ensemble_cache"}
    assert list(tiny_stages.by_stage()) == [s for s in STAGE_FOLDERS if s not in optional]
    assert {"data", "teacher", "logit_cache", "student", "quantize"} <= set(tiny_stages.by_stage())
    # A second call through the same wiring reuses every finished stage.
    upstream = run_until_cache(tiny_config, tiny_config.store_dir)
    student = run_student(tiny_config.student, tiny_config.store_dir, upstream)
    assert student.reused and student.key == tiny_stages.student.key
