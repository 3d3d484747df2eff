"""The model card's evidence: intervals, per-class scores, the champion, teacher disagreements."""

import numpy as np
import pytest

from distill.paired import compare
from tasks.model_card import card_evidence, evidence_sections

NAMES = ["negative", "positive"]


def logits_for(labels, confidence):
    """Two-class logits whose softmax gives `confidence` to each row's label."""
    margin = np.log(np.asarray(confidence) / (1 - np.asarray(confidence)))
    rows = np.zeros((len(labels), 2))
    rows[np.arange(len(labels)), labels] = margin
    return rows


def test_card_evidence_counts_per_class_and_shows_the_surest_teacher_disagreements():
    texts = [f"text {i}" for i in range(6)]
    labels = [1, 1, 1, 0, 0, 0]
    shipped = logits_for([1, 1, 0, 0, 0, 1], [0.9] * 6)
    teacher = logits_for([1, 0, 1, 0, 0, 0], [0.8, 0.6, 0.95, 0.7, 0.7, 0.75])
    evidence = card_evidence(texts, labels, shipped, teacher, NAMES, limit=2)
    assert evidence.accuracy.score == pytest.approx(4 / 6) and evidence.accuracy.n == 6
    positive = evidence.per_class[1]
    assert (positive.precision, positive.recall, positive.support) == (2 / 3, 2 / 3, 3)
    # Rows 1, 2 and 5 differ; the teacher is surest of row 2 (0.95), then row 5 (0.75).
    assert [d.text for d in evidence.disagreements] == ["text 2", "text 5"]
    first = evidence.disagreements[0]
    assert (first.label, first.shipped, first.teacher) == ("positive", "negative", "positive")
    assert first.shipped_probability == pytest.approx(0.9)
    assert first.teacher_probability == pytest.approx(0.95)


def test_the_evidence_sections_show_intervals_the_champion_and_the_disagreements():
    labels = [1] * 50 + [0] * 50
    shipped = logits_for([1] * 45 + [0] * 5 + [0] * 50, [0.8] * 100)
    teacher = logits_for(labels, [0.9] * 100)
    champion = compare([1] * 40 + [0] * 60, shipped.argmax(-1), labels)
    evidence = card_evidence(
        [f"t{i}" for i in range(100)], labels, shipped, teacher, NAMES, champion
    )
    shipped_vs_student = compare(labels, shipped.argmax(-1), labels)
    text = "\n\n".join(evidence_sections(evidence, shipped_vs_student, "4"))
    low, high = evidence.accuracy.interval
    assert low < 0.95 < high
    assert f"| accuracy | 0.95 | {low:.4f} to {high:.4f} | 100 |" in text
    assert "| macro F1 |" in text and "| positive | 1 | 0.9 | 50 |" in text
    assert "Against champion v4, paired on the same 100 test texts" in text
    assert "only reference right 0, only candidate right 5" in text
    assert "validation texts the compression gates decided on" in text
    assert "| t45 | positive | negative (0.800) | positive (0.900) |" in text
    first = evidence_sections(
        card_evidence(["a"], [1], shipped[:1], teacher[:1], NAMES), shipped_vs_student, None
    )
    assert "first gated model" in "\n".join(first)


def test_card_evidence_refuses_rows_that_do_not_line_up():
    with pytest.raises(ValueError, match="2 texts, 3 labels"):
        card_evidence(["a", "b"], [0, 1, 1], np.zeros((3, 2)), np.zeros((3, 2)), NAMES)


def test_a_shipped_trim_shows_its_paired_comparison_and_why_it_shipped(tiny_stages):
    from tasks.model_card import _tokenizer_note

    export, quantized = tiny_stages.export.manifest, tiny_stages.quantize.manifest
    assert quantized.trimmed and export.trimming_comparison is not None
    note = _tokenizer_note(export, quantized)
    assert "Trimming against the trained student on validation: accuracy difference" in note
    assert export.vocabulary.reason in note


def test_the_card_says_which_fp32_graph_was_quantized_and_on_what_evidence(tiny_stages):
    from tasks.model_card import _graph_note

    quantized = tiny_stages.quantize.manifest
    note = _graph_note(quantized)
    assert quantized.optimization is not None and quantized.optimization.reason in note
    assert "paired calls" in note or "parity" in note  # the evidence, whichever way it went
    off = quantized.model_copy(update={"optimization": None})
    assert "graph optimisation off" in _graph_note(off)


def test_the_card_draws_every_loss_term_whatever_their_number(tmp_path):
    """Four terms and more: one line style each (reused in turn), one legend entry each."""
    from distill.gates import GateResult
    from distill.losses import LOSS_TERM_NAMES
    from tasks.model_card import (
        CURVES,
        ModelPoint,
        plot_training_curves,
        term_series,
        write_model_card,
    )

    assert len(LOSS_TERM_NAMES) >= 4
    parts = {name: 0.1 * (index + 1) for index, name in enumerate(LOSS_TERM_NAMES)}
    student = [
        {"step": 10, "train_loss": 0.5, **parts, "lr": 1e-4},
        {"step": 20, "train_loss": 0.4, **parts, "lr": 1e-4},
        {"step": 20, "val_accuracy": 0.8, "val_loss": 0.45, "epoch": 1.0},
    ]
    teacher = [{"step": 10, "train_loss": 0.7, "ce": 0.7}, {"step": 10, "val_accuracy": 0.8}]
    histories = {"teacher": teacher, "student": student}
    files = write_model_card(
        tmp_path,
        "# card",
        histories,
        [ModelPoint("student int8", 0.8, 1.0, 1.5)],
        [
            GateResult(
                name="retention",
                value=1.0,
                threshold=0.9,
                passed=True,
                reason="retention = 1 >= 0.9",
            )
        ],
        None,
    )
    assert tmp_path / CURVES in files and (tmp_path / CURVES).stat().st_size > 0
    labels = plot_training_curves(histories, tmp_path / "again.png")
    assert {f"student {name}" for name in LOSS_TERM_NAMES} <= set(labels)
    assert "teacher kl" not in labels
    # Styles never run out: six terms get six styles, the fifth reusing the first.
    six = term_series([f"term{i}" for i in range(6)])
    assert [name for name, _ in six] == [f"term{i}" for i in range(6)]
    assert six[4][1] == six[0][1] and len({style for _, style in six[:4]}) == 4
