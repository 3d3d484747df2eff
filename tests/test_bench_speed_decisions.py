"""The speed-decisions benchmark's pure parts: counting each rule's choices over repeats, and
both rules run on real (tiny) graphs timed both ways."""

from bench.speed_decisions import blockwise_seconds, decisions, report, summary
from deploy.latency import batch1_feeds


def repeat(load: str, old_kept: bool, new_kept: bool) -> dict:
    speed = {"pairs": 9, "median_ratio": 1.0, "interval": (0.98, 1.02)}
    return {
        "load": load, "old_fused_kept": old_kept, "new_fused_kept": new_kept,
        "old_int8_refused": False, "new_int8_refused": False, "old_fused_ratio": 0.9,
        "old_int8_ratio": 0.5, "fused": speed, "int8": speed,
    }  # fmt: skip


def test_the_summary_counts_choices_and_flips_per_load():
    repeats = [repeat("quiet", True, False), repeat("loaded", False, False)] * 2
    repeats.append(repeat("quiet", True, False))
    totals = summary(repeats)
    assert totals["all/old_fused_kept"] == {"yes": 3, "of": 5, "flips": 2}
    assert totals["quiet/old_fused_kept"] == {"yes": 3, "of": 3, "flips": 0}
    assert totals["all/new_fused_kept"] == {"yes": 0, "of": 5, "flips": 0}
    result = {"config": "x.yaml", "feeds": 4, "rounds": 3, "stage_decision": {}, "summary": totals,
              "repeats": repeats}  # fmt: skip
    assert "| fused fp32 graph kept | old | 3 / 3 | 0 / 2 | 3 / 5 |" in report(result)


def test_both_rules_decide_on_real_graphs(tiny_stages):
    graph = tiny_stages.export.file(tiny_stages.export.manifest.file)
    ids = [[2, 5 + i, 10 + i, 3] for i in range(5)]  # within any trimmed vocabulary
    feeds = batch1_feeds(ids, [[1] * 4] * 5)
    graphs = {"base": graph, "fused": graph, "int8": graph}
    assert [len(v) for v in blockwise_seconds(graphs, feeds).values()] == [15, 15, 15]
    chosen = decisions(graphs, feeds, old_first=True)
    # The same graph three times: paired, it is never significantly faster by 5% than itself.
    assert chosen["new_fused_kept"] is False and chosen["fused"]["pairs"] == 15
