"""The decisions benchmark's pure parts: the old and new rules on discordant counts, and the
stability of a decision over bootstrap resamples."""

import pytest

from bench.decisions import champion_rules, compression_rules, int8_rules, stability


def test_the_old_compression_rule_flips_on_seven_texts_and_the_new_one_does_not():
    old, new = compression_rules(0.005)
    # The default run's trim: 7 texts lost, none gained, of 1,057 (cost 0.0066 > 0.005).
    assert old(1057, 7, 0) == "refuse"
    assert new(1057, 7, 0) == "refuse"  # 7 of 7 discordant texts: p = 1/128, significant
    # 17 lost and 10 gained: the same net cost, but chance explains it.
    assert old(1057, 17, 10) == "refuse" and new(1057, 17, 10) == "ship"
    assert old(1057, 3, 1) == new(1057, 3, 1) == "ship"  # within budget


def test_the_int8_rules_agree_with_the_compression_rules():
    for counts in [(1000, 7, 0), (1000, 17, 10), (1000, 2, 2)]:
        assert [rule(*counts) for rule in int8_rules(0.005)] == [
            rule(*counts) for rule in compression_rules(0.005)
        ]


def test_champion_rules():
    old, new = champion_rules(0.0, "replace_if_data_changed", data_changed=False)
    assert old(1000, 10, 11) == "promote" and new(1000, 10, 11) == "keep"  # a tie, same data
    assert new(1000, 0, 12) == "promote" and new(1000, 12, 0) == "keep"
    _, replace = champion_rules(0.0, "replace", data_changed=False)
    assert replace(1000, 10, 11) == "promote"


def test_stability_is_one_for_a_clear_decision_and_near_a_half_on_a_knife_edge():
    old, new = compression_rules(0.005)
    assert stability(old, 1000, 0, 0) == 1.0
    assert stability(new, 1000, 60, 0) == 1.0
    # A cost exactly at the budget: the point estimate flips on about half the resamples.
    edge = stability(old, 1000, 25, 20)
    assert 0.3 < edge < 0.7
    assert stability(new, 1000, 25, 20) > edge + 0.2  # needs a significant cost to flip
    assert stability(old, 1000, 25, 20) == edge  # seeded: reproducible


def test_stability_counts_the_share_of_equal_decisions():
    calls = []

    def rule(n, b, c):
        calls.append((b, c))
        return "a" if b >= c else "b"

    share = stability(rule, 100, 5, 5, resamples=200)
    assert len(calls) == 201 and 0 < share < 1
    assert share == pytest.approx(sum(b >= c for b, c in calls[1:]) / 200)
