"""bench/first_run.py: a run's stages are reported in the order the pipeline builds them."""

from bench.first_run import in_pipeline_order


def test_stages_are_listed_in_pipeline_order_not_by_name():
    summary = {name: {"seconds": 1.0} for name in ("student", "data", "logit_cache", "teacher")}
    assert list(in_pipeline_order(summary)) == ["data", "teacher", "logit_cache", "student"]


def test_a_stage_the_table_lacks_goes_last():
    summary = {"a_new_stage": {}, "quantize": {}, "export": {}}
    assert list(in_pipeline_order(summary)) == ["export", "quantize", "a_new_stage"]
