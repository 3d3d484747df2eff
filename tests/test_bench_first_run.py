"""bench/first_run.py: a run's stages are reported in the order the pipeline builds them."""

import json

from bench.first_run import in_pipeline_order, labelling_line, labelling_of


def test_stages_are_listed_in_pipeline_order_not_by_name():
    summary = {name: {"seconds": 1.0} for name in ("student", "data", "logit_cache", "teacher")}
    assert list(in_pipeline_order(summary)) == ["data", "teacher", "logit_cache", "student"]


def test_a_stage_the_table_lacks_goes_last():
    summary = {"a_new_stage": {}, "quantize": {}, "export": {}}
    assert list(in_pipeline_order(summary)) == ["export", "quantize", "a_new_stage"]


def write_manifest(folder, data):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(data))


def test_the_cache_stage_is_split_into_labelling_and_the_rest(tmp_path):
    store = tmp_path / "store"
    cache = {"labelling_runtime": "torch", "precision": "bf16"}
    write_manifest(store / "logit_cache" / "a", cache)
    write_manifest(store / "logit_shard" / "b", {"rows": 600, "seconds": 4.0})
    write_manifest(store / "logit_shard" / "c", {"rows": 400, "seconds": 6.0})
    labelling = labelling_of(tmp_path)
    assert labelling == {"runtime": "torch", "precision": "bf16", "texts": 1000,
                         "seconds": 10.0, "texts_per_second": 100.0}  # fmt: skip
    assert labelling_line(labelling) == (
        "labelling torch (bf16): 1,000 texts in 0.2 minutes of the cache stage"
    )


def test_a_store_with_several_caches_is_not_one_first_run_and_gives_no_breakdown(tmp_path):
    for key in ("a", "b"):
        write_manifest(tmp_path / "store" / "logit_cache" / key, {"labelling_runtime": "onnx"})
    assert labelling_of(tmp_path) is None
    assert labelling_line("onnx") == "labelling onnx"  # a row recorded before the breakdown
