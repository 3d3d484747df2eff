"""Promotion, rollback and manual override on a real SQLite MLflow registry.

The registered models are real ONNX graphs that always answer the same logits, so their
accuracy on a split is known by construction: "positive" scores 0.7 on SPLIT, "negative" 0.3.
"""

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper

from distill.config import PromotionConfig
from distill.gates import CHAMPION_GATE, Measurements, baseline_gate, evaluate_gates
from distill.paired import compare
from tasks.registry import (
    REGISTRY_RECORD,
    RegistryError,
    aliases,
    apply_gates,
    check_registry_record,
    judge_registration,
    lineage,
    mlflow_check,
    move_champion,
    onnx_predictions,
    override_promote,
    parse_model_uri,
    register_model,
    registry_lock,
    resolve_model_uri,
    rollback,
    score_champion,
)
from tasks.tracking import MlflowTracker, TrackingUnavailable, mlflow_client
from tests.conftest import REPO
from tests.conftest import run_cli as distillery

NAME = "registry-test"
SPLIT = {
    "input_ids": [[101, 2307 + i, 102] for i in range(10)],
    "attention_mask": [[1, 1, 1]] * 10,
    "label": [1] * 7 + [0] * 3,
}
ACCURACY = {"positive": 0.7, "negative": 0.3}
CONFIG = PromotionConfig(max_latency_ms=10.0, min_improvement=0.0)
GATES = ["retention", baseline_gate("accuracy"), "latency_ms", CHAMPION_GATE]


def constant_classifier(path, logits):
    """An ONNX graph (input_ids, attention_mask) -> logits [batch, classes], same row for all."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(logits)])
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["input_ids"], ["batch_size"], start=0, end=1),
            helper.make_node("Concat", ["batch_size", "classes"], ["shape"], axis=0),
            helper.make_node("Expand", ["row", "shape"], ["logits"]),
        ],
        "constant-classifier",
        [ids, mask],
        [out],
        initializer=[
            helper.make_tensor("classes", TensorProto.INT64, [1], [len(logits)]),
            helper.make_tensor("row", TensorProto.FLOAT, [1, len(logits)], logits),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "positive": constant_classifier(folder / "positive.onnx", [0.0, 1.0]),
        "negative": constant_classifier(folder / "negative.onnx", [1.0, 0.0]),
    }


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A migrated, empty MLflow SQLite file: copying it is much faster than migrating anew."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow_client(f"sqlite:///{path}").search_registered_models()
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


class Registry:
    """A fresh SQLite registry; each `register` is one run that registers one model, exactly
    as the pipeline does (`register_model`, with this workdir's registry record)."""

    def __init__(self, root, models, store):
        shutil.copyfile(store, root / "mlflow.db")
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.root = root
        self.record = root / REGISTRY_RECORD
        self.models = models
        self.client = mlflow_client(self.uri)
        self.trackers = {}
        self.registered = 0

    def registration(self, kind, fingerprint=None):
        # The constant graphs repeat, so each registration gets its own data unless told.
        self.registered += 1
        tracker = MlflowTracker(
            self.uri, "registry-tests", self.root / "artifacts", registry_record=self.record
        )
        tracker.start_run(kind, tags={"git_commit": "abc123"})
        registration = register_model(
            tracker,
            self.models[kind],
            NAME,
            num_labels=2,
            version_tags={
                "data_fingerprint": fingerprint or f"data-{self.registered}",
                "teacher_sha256": "t" * 8,
            },
        )
        self.trackers.setdefault(registration.version, tracker)
        return registration, tracker

    def register(self, kind, fingerprint=None):
        return self.registration(kind, fingerprint)[0].version

    def gate(self, version, kind, config=CONFIG, paired=False, **measured):
        """Judge and apply the gates; `paired`: decide the champion gate on both models'
        predictions on SPLIT, as the pipeline does, instead of on two point estimates."""
        results = gate_results(self, kind, config, version, paired, **measured)
        return apply_gates(self.client, NAME, version, results, f"# {NAME} v{version}")

    def aliases(self):
        return aliases(self.client, NAME)

    def tags(self, version):
        return self.client.get_model_version(NAME, version).tags


def gate_results(registry, kind, config=CONFIG, version="x", paired=False, **measured):
    """The gates on a model of `kind` against the registry's current champion."""
    champion = score_champion(
        registry.uri, NAME, SPLIT, 2, registry.root / f"champion-{version}", max_length=8
    )
    if paired and champion is not None:
        predicted, _ = onnx_predictions(registry.models[kind], SPLIT)
        measured["champion_comparison"] = compare(champion.predicted, predicted, SPLIT["label"])
        fingerprint = registry.tags(version)["data_fingerprint"]
        measured["data_changed"] = champion.data_fingerprint != fingerprint
    values = {
        "retention": 0.97,
        "latency_ms": 1.0,
        "score": ACCURACY[kind],
        "baseline_score": 0.0,
        "champion_version": champion and champion.version,
        "champion_score": champion and champion.score,
    }
    return evaluate_gates(config, Measurements(**(values | measured)), mlflow_check)


@pytest.fixture
def registry(tmp_path, onnx_models, empty_store):
    return Registry(tmp_path, onnx_models, empty_store)


def promoted_chain(registry, *kinds):
    """Register and gate each kind in turn; every one is expected to become champion."""
    versions = []
    for kind in kinds:
        version = registry.register(kind)
        assert registry.gate(version, kind).promoted
        versions.append(version)
    return versions


def test_the_first_model_that_passes_the_gates_becomes_champion(registry):
    version = registry.register("negative")  # even a weak first model: there is nothing to beat
    outcome = registry.gate(version, "negative")
    assert outcome.promoted and outcome.alias == "champion" and outcome.replaced is None
    assert registry.aliases() == {"champion": version}  # a champion is no challenger
    tags = registry.tags(version)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.by"] == "gates"
    assert all(tags[f"gate.{gate}"] == "passed" for gate in GATES)
    assert "no champion yet" in tags[f"gate.{CHAMPION_GATE}.reason"]
    description = registry.client.get_model_version(NAME, version).description
    assert description == f"# {NAME} v{version}"


def test_a_first_model_failing_an_absolute_gate_leaves_no_champion(registry):
    version = registry.register("positive")
    outcome = registry.gate(version, "positive", latency_ms=12.5)
    assert not outcome.promoted and outcome.alias == "challenger"
    assert registry.aliases() == {"challenger": version}
    tags = registry.tags(version)
    assert tags["gate.latency_ms"] == "failed"
    assert tags["gate.latency_ms.value"] == "12.5" and tags["gate.latency_ms.threshold"] == "10"
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.reason"].startswith("latency_ms: ")


def test_a_better_model_takes_over_and_the_old_champion_becomes_previous(registry):
    first, second = promoted_chain(registry, "negative", "positive")
    assert registry.aliases() == {"champion": second, "previous": first}
    assert registry.tags(second)["promotion.replaces"] == first
    assert registry.tags(second)[f"gate.{CHAMPION_GATE}.threshold"] == "0.3"


def test_a_worse_model_stays_challenger_tagged_with_every_gate(registry):
    (champion,) = promoted_chain(registry, "positive")
    version = registry.register("negative")
    outcome = registry.gate(version, "negative")
    assert not outcome.promoted and outcome.alias == "challenger"
    assert registry.aliases() == {"champion": champion, "challenger": version}
    tags = registry.tags(version)
    for gate in GATES:
        assert tags[f"gate.{gate}"] in {"passed", "failed"}
        assert {f"gate.{gate}.value", f"gate.{gate}.threshold", f"gate.{gate}.reason"} <= set(tags)
    assert tags[f"gate.{CHAMPION_GATE}"] == "failed"
    assert tags[f"gate.{CHAMPION_GATE}.value"] == "0.3"
    assert tags[f"gate.{CHAMPION_GATE}.threshold"] == "0.7"
    assert CHAMPION_GATE in tags[f"gate.{CHAMPION_GATE}.reason"]
    assert tags["promotion.decision"] == "rejected" and "promotion.replaces" not in tags


def test_min_improvement_holds_back_an_equal_model(registry):
    promoted_chain(registry, "positive")
    version = registry.register("positive")
    strict = CONFIG.model_copy(update={"min_improvement": 0.05})
    assert not registry.gate(version, "positive", config=strict).promoted


def test_a_challenger_the_test_texts_cannot_tell_apart_replaces_only_with_new_data(registry):
    # "negative" is right on 3 of SPLIT's 10 texts, the "positive" champion on the other 7:
    # 7 against 3 discordant texts is p = 0.17, no evidence either way on 10 texts.
    (champion,) = promoted_chain(registry, "positive")
    champion_data = registry.tags(champion)["data_fingerprint"]
    same_data = registry.register("negative", fingerprint=champion_data)
    kept = registry.gate(same_data, "negative", paired=True)
    assert not kept.promoted and registry.aliases()["champion"] == champion
    tags = registry.tags(same_data)
    reason = tags[f"gate.{CHAMPION_GATE}.reason"]
    assert reason.startswith("indistinguishable, p = 0.34") and "data unchanged" in reason
    assert tags[f"gate.{CHAMPION_GATE}.only_reference_right"] == "7"
    assert tags[f"gate.{CHAMPION_GATE}.only_candidate_right"] == "3"
    assert float(tags[f"gate.{CHAMPION_GATE}.p_worse"]) == pytest.approx(176 / 1024)
    assert tags[f"gate.{CHAMPION_GATE}.interval"].startswith("[-")

    new_data = registry.register("negative", fingerprint="data-new")
    replaced = registry.gate(new_data, "negative", paired=True)
    assert replaced.promoted and registry.aliases()["champion"] == new_data
    reason = registry.tags(new_data)[f"gate.{CHAMPION_GATE}.reason"]
    assert reason.endswith("data changed: champion replaced")


def test_the_champion_is_scored_on_the_current_split(registry, tmp_path):
    promoted_chain(registry, "positive")
    score = score_champion(registry.uri, NAME, SPLIT, 2, tmp_path / "a", 8)
    assert score.score == pytest.approx(0.7)
    # Its answer per text, for the paired comparison, and the data it was trained on.
    assert score.predicted.tolist() == [1] * 10
    assert score.data_fingerprint == "data-1"
    relabelled = {**SPLIT, "label": [0] * 10}  # the data changed since it was trained
    assert score_champion(registry.uri, NAME, relabelled, 2, tmp_path / "b", 8).score == 0.0
    assert score_champion(registry.uri, NAME, SPLIT, 3, tmp_path / "c", 8).score is None
    # In macro-F1 the always-positive champion scores F1 0.82 on positives, 0 on negatives.
    by_f1 = score_champion(registry.uri, NAME, SPLIT, 2, tmp_path / "d", 8, metric="macro_f1")
    assert by_f1.score == pytest.approx(0.7 / 1.7) and by_f1.accuracy == pytest.approx(0.7)


def word_level_tokenizer(path, vocabulary):
    """A whitespace word-level tokenizer.json that wraps every text in [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    tokenizer.save(str(path))


def test_the_champion_reads_the_texts_through_its_own_bundle_tokenizer(registry, tmp_path):
    # A champion with a trimmed vocabulary: this run's token ids would mean other words to it.
    (version,) = promoted_chain(registry, "positive")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    vocabulary = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "great": 3, "film": 4}
    word_level_tokenizer(bundle / "tokenizer.json", vocabulary)
    registry.trackers[version].log_artifacts(bundle, "bundle")
    texts = {**SPLIT, "text": ["great film"] * 5 + ["dull great film indeed"] * 5}
    score = score_champion(registry.uri, NAME, texts, 2, tmp_path / "scored", max_length=4)
    assert score.score == pytest.approx(0.7)
    assert list(score.split["input_ids"][0]) == [1, 3, 4, 2]
    assert list(score.split["input_ids"][-1]) == [1, 0, 3, 2]  # unknown word, truncated at 4
    assert score.split["input_ids"][0] != SPLIT["input_ids"][0]


def assert_consistent(registry):
    """`previous` never names the champion; `challenger` never names a promoted version."""
    now = registry.aliases()
    assert now.get("previous") is None or now.get("previous") != now.get("champion"), now
    if "challenger" in now:
        assert registry.tags(now["challenger"]).get("promotion.decision") != "promoted", now


def test_an_unchanged_model_reuses_its_version_and_moves_no_alias(registry):
    first, _ = registry.registration("positive", fingerprint="data-x")
    assert not first.reused
    assert registry.gate(first.version, "positive").promoted
    before = registry.aliases()
    tags_before = registry.tags(first.version)

    again, tracker = registry.registration("positive", fingerprint="data-x")
    assert again.reused and again.version == first.version
    assert registry.aliases() == before == {"champion": first.version}
    assert registry.tags(first.version) == tags_before  # not re-tagged by the new run
    assert len(registry.client.search_model_versions(f"name='{NAME}'")) == 1
    run = registry.client.get_run(tracker.run_id)
    assert run.data.tags["registry.reused_version"] == first.version
    assert (
        registry.tags(first.version)["onnx_sha256"]
        == hashlib.sha256(registry.models["positive"].read_bytes()).hexdigest()
    )

    # The same graph on other data, or another graph on the same data, is a new version.
    other_data = registry.register("positive", fingerprint="data-y")
    other_graph = registry.register("negative", fingerprint="data-x")
    assert len({first.version, other_data, other_graph}) == 3
    assert registry.aliases()["challenger"] == other_graph


def test_a_version_whose_run_was_killed_before_its_gates_is_judged_by_the_rerun(registry):
    """kill -9 right after registration, then the same command again: the rerun finds the
    same model registered, and judges it instead of leaving it "not judged" for ever."""
    from tasks.recovery import _mark_ungated_versions

    first, killed = registry.registration("positive", fingerprint="data-x")
    registry.client.set_terminated(killed.run_id, status="KILLED")
    _mark_ungated_versions(registry.client, killed.run_id)  # what the rerun's recovery does
    assert registry.tags(first.version)["promotion.decision"] == "not judged"

    again, rerun = registry.registration("positive", fingerprint="data-x")
    assert again.reused and again.version == first.version
    results = gate_results(registry, "positive")
    outcome = judge_registration(registry.client, again, results, "# card", rerun.run_id)
    assert outcome.promoted and outcome.judged
    assert registry.aliases() == {"champion": first.version}
    tags = registry.tags(first.version)
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.judged_by_run"] == rerun.run_id

    # Judged once, the next rerun reuses it as it is.
    third, later = registry.registration("positive", fingerprint="data-x")
    outcome = judge_registration(registry.client, third, results, "# card", later.run_id)
    assert not outcome.promoted and not outcome.judged
    assert "was promoted before" in outcome.reason
    assert registry.tags(first.version)["promotion.judged_by_run"] == rerun.run_id


def test_challenger_names_the_newest_version_not_promoted(registry):
    (champion,) = promoted_chain(registry, "negative")
    assert "challenger" not in registry.aliases()  # every version so far was promoted
    rejected = registry.register("negative")
    assert not registry.gate(rejected, "negative", latency_ms=50.0).promoted
    assert registry.aliases()["challenger"] == rejected
    newest = registry.register("positive")
    assert registry.aliases()["challenger"] == newest  # registered, not yet gated
    assert registry.gate(newest, "positive").promoted
    # The new champion stops being challenger; the newest version still waiting is.
    assert registry.aliases() == {"champion": newest, "previous": champion, "challenger": rejected}
    assert_consistent(registry)
    override_promote(registry.client, NAME, rejected, by="dave")
    assert registry.aliases() == {"champion": rejected, "previous": newest}
    assert_consistent(registry)


def test_previous_never_names_the_champion(registry):
    first, second = promoted_chain(registry, "negative", "positive")
    rollback(registry.client, NAME)  # champion v1, nothing before it
    assert registry.aliases() == {"champion": first}
    # A stale `previous` that names the version about to become champion is dropped.
    registry.client.delete_registered_model_alias(NAME, "champion")
    registry.client.set_registered_model_alias(NAME, "previous", second)
    move_champion(registry.client, NAME, second)
    assert registry.aliases() == {"champion": second}
    override_promote(registry.client, NAME, first, by="erin")
    assert registry.aliases() == {"champion": first, "previous": second}
    assert_consistent(registry)


def test_two_promotions_at_once_are_serialised(registry):
    """The strong model scores the (absent) champion and is slow to promote; meanwhile a weak
    model is gated. Without the lock the weak one also sees "no champion yet" and ends up
    champion; with it, the weak one waits and is judged against the strong champion."""
    strong, weak = registry.register("positive"), registry.register("negative")
    scored, applied = threading.Event(), threading.Event()
    errors = []

    def promote(version, kind, before_apply):
        try:
            with registry_lock(registry.uri, NAME):
                champion = score_champion(
                    registry.uri, NAME, SPLIT, 2, registry.root / f"c-{version}", 8
                )
                before_apply()
                values = Measurements(
                    retention=0.97,
                    latency_ms=1.0,
                    score=ACCURACY[kind],
                    baseline_score=0.0,
                    champion_version=champion and champion.version,
                    champion_score=champion and champion.score,
                )
                results = evaluate_gates(CONFIG, values, mlflow_check)
                apply_gates(registry.client, NAME, version, results, "card")
                applied.set()
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    def strong_first():
        scored.set()
        time.sleep(1.0)

    first = threading.Thread(target=promote, args=(strong, "positive", strong_first))
    first.start()
    assert scored.wait(60)
    second = threading.Thread(target=promote, args=(weak, "negative", lambda: applied.wait(10)))
    second.start()
    first.join(120)
    second.join(120)
    assert not errors, errors
    assert registry.aliases() == {"champion": strong, "challenger": weak}
    assert registry.tags(weak)[f"gate.{CHAMPION_GATE}"] == "failed"
    assert_consistent(registry)


def test_a_held_lock_times_out_with_a_clear_error(registry):
    with (
        registry_lock(registry.uri, NAME),
        pytest.raises(RegistryError, match="another registration or promotion of registry-test"),
        registry_lock(registry.uri, NAME, timeout=0.2),
    ):
        pass


def test_a_reset_registry_is_refused_until_its_record_is_deleted(registry, empty_store):
    registry.register("positive")
    registry.register("negative")
    assert json.loads(registry.record.read_text())["registries"] == [
        {"tracking_uri": registry.uri, "registered_model": NAME, "highest_version": 2}
    ]
    shutil.copyfile(empty_store, registry.root / "mlflow.db")  # mlflow.db deleted, recreated
    with pytest.raises(RegistryError) as refused:
        registry.register("positive")
    message = str(refused.value)
    assert str(registry.record) in message and "v2" in message and "up to v0" in message
    assert "delete" in message
    assert registry.client.search_registered_models() == []  # nothing was registered
    with pytest.raises(RegistryError, match="reset"):
        check_registry_record(registry.client, registry.record, registry.uri, NAME)

    registry.record.unlink()  # the user starts the numbering over
    assert registry.register("positive") == "1"
    check_registry_record(registry.client, registry.record, registry.uri, NAME)


def test_a_corrupt_registry_record_is_named(registry):
    registry.record.write_text("{not json")
    with pytest.raises(RegistryError, match=f"{registry.record} cannot be read"):
        check_registry_record(registry.client, registry.record, registry.uri, NAME)


def test_registration_leaves_the_run_running_and_the_global_uri_alone(registry):
    import mlflow

    before = mlflow.get_tracking_uri()
    registration, tracker = registry.registration("positive")
    assert registry.client.get_run(tracker.run_id).info.status == "RUNNING"
    assert mlflow.get_tracking_uri() == before != registry.uri
    assert mlflow.active_run() is None
    tracker.end_run(succeeded=False)  # what the flow does when a later stage fails
    assert registry.client.get_run(tracker.run_id).info.status == "FAILED"
    version = registry.client.get_model_version(NAME, registration.version)
    assert version.run_id == tracker.run_id
    local = registry.client.download_artifacts(tracker.run_id, "model/MLmodel", str(registry.root))
    assert "onnx" in Path(local).read_text()


def test_one_resolver_for_model_uris(registry):
    (version,) = promoted_chain(registry, "positive")
    assert resolve_model_uri(registry.client, f"models:/{NAME}@champion") == (NAME, version)
    assert resolve_model_uri(registry.client, f"models:/{NAME}/{version}") == (NAME, version)
    assert parse_model_uri(f"models:/{NAME}@champion") == (NAME, "champion", None)
    with pytest.raises(RegistryError, match="no version with alias 'previous'"):
        resolve_model_uri(registry.client, f"models:/{NAME}@previous")
    with pytest.raises(RegistryError, match=f"models:/{NAME}/99"):
        resolve_model_uri(registry.client, f"models:/{NAME}/99")
    for bad in ("runs:/abc/model", "models:/", "models:/name", "models:/@alias", "models:/a/b/1"):
        with pytest.raises(RegistryError, match="models:/NAME@ALIAS"):
            parse_model_uri(bad)


def test_gates_never_promote_a_version_whose_run_failed(registry):
    version = registry.register("positive")
    registry.trackers[version].end_run(succeeded=False)
    outcome = registry.gate(version, "positive")
    assert not outcome.promoted and "FAILED" in outcome.reason
    assert "champion" not in registry.aliases()
    assert registry.tags(version)["promotion.decision"] == "rejected"


def test_a_reviewer_can_override_the_gates_and_is_recorded(registry):
    (champion,) = promoted_chain(registry, "positive")
    rejected = registry.register("negative")
    assert not registry.gate(rejected, "negative").promoted
    outcome = override_promote(registry.client, NAME, rejected, by="alice", reason="hotfix")
    assert outcome.promoted and outcome.replaced == champion
    expected = {"champion": rejected, "previous": champion}
    assert registry.aliases() == expected
    tags = registry.tags(rejected)
    assert tags["promotion.override"] == "true" and tags["promotion.by"] == "alice"
    assert tags["promotion.reason"] == "hotfix" and tags["promotion.replaces"] == champion
    assert datetime.fromisoformat(tags["promotion.at"]).tzinfo is not None
    assert tags[f"gate.{CHAMPION_GATE}"] == "failed"  # the gates' verdict stays on record
    with pytest.raises(RegistryError, match="already the champion"):
        override_promote(registry.client, NAME, rejected)


def test_rollback_walks_back_through_the_champions(registry):
    first, second, third = promoted_chain(registry, "negative", "positive", "positive")
    assert rollback(registry.client, NAME, by="bob").version == second
    assert registry.aliases() == {"champion": second, "previous": first}
    assert registry.tags(third)["rollback.by"] == "bob"
    rollback(registry.client, NAME)
    assert registry.aliases() == {"champion": first}
    with pytest.raises(RegistryError, match="no 'previous' version"):
        rollback(registry.client, NAME)
    assert registry.aliases()["champion"] == first


class Interrupted(Exception):
    pass


class WatchedClient(MlflowClient):
    """A real client that records the aliases after every alias write, and can be stopped
    after a given number of writes (a crash in the middle of a promotion)."""

    def __init__(self, uri, stop_after=None):
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.states, self.stop_after = [], stop_after

    def set_registered_model_alias(self, name, alias, version):
        super().set_registered_model_alias(name, alias, version)
        self.states.append(aliases(self, name))
        if self.stop_after is not None and len(self.states) >= self.stop_after:
            raise Interrupted


def test_a_promotion_stopped_midway_leaves_exactly_one_champion(registry):
    (old,) = promoted_chain(registry, "negative")
    new = registry.register("positive")

    watched = WatchedClient(registry.uri, stop_after=1)
    with pytest.raises(Interrupted):
        move_champion(watched, NAME, new)
    assert registry.aliases()["champion"] == old  # stopped: the old champion still serves

    watched = WatchedClient(registry.uri)
    assert move_champion(watched, NAME, new) == old  # a rerun finishes the job
    assert registry.aliases()["champion"] == new and registry.aliases()["previous"] == old
    assert all("champion" in state for state in watched.states)


def test_lineage_names_run_config_data_teacher_commit_and_bundle(registry, tmp_path):
    (version,) = promoted_chain(registry, "positive")
    tracker = registry.trackers[version]
    config_file = tmp_path / "config.resolved.yaml"
    config_file.write_text("name: tiny\nseed: 42\n")
    tracker.log_artifact(config_file, "config")
    info = lineage(registry.client, f"models:/{NAME}@champion")
    assert info["run_id"] == tracker.run_id and info["version"] == version
    assert info["config"] == {"name": "tiny", "seed": 42}
    assert info["data_fingerprint"].startswith("data-") and info["teacher_sha256"] == "t" * 8
    assert info["git_commit"] == "abc123"
    assert info["bundle_uri"].endswith(f"{tracker.run_id}/artifacts/bundle")
    assert info["bundle_logged"] is False
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.onnx").write_bytes(b"x")
    tracker.log_artifacts(tmp_path / "bundle", "bundle")
    assert lineage(registry.client, f"models:/{NAME}/{version}")["bundle_logged"] is True
    with pytest.raises(RegistryError, match="no version with alias 'previous'"):
        lineage(registry.client, f"models:/{NAME}@previous")


def test_promote_and_rollback_commands(registry):
    first = registry.register("positive")
    assert registry.gate(first, "positive").promoted
    second = registry.register("negative")
    assert not registry.gate(second, "negative").promoted
    uri = ["--tracking-uri", registry.uri]

    result = distillery("promote", NAME, second, "--by", "carol", "--reason", "ship it", *uri)
    assert result.returncode == 0, result.stderr
    assert f"v{second} is champion (manual override)" in result.stdout
    assert registry.tags(second)["promotion.by"] == "carol"

    result = distillery("rollback", NAME, *uri)
    assert result.returncode == 0, result.stderr
    assert registry.aliases()["champion"] == first

    result = distillery("promote", NAME, "99", *uri)
    assert result.returncode == 2 and "error:" in result.stderr


def test_registry_commands_on_a_missing_workdir_create_nothing(tmp_path):
    missing = tmp_path / "no-such-workdir"
    result = distillery("rollback", NAME, "--workdir", missing)
    assert result.returncode == 2
    assert f"--workdir {missing} holds no MLflow store" in result.stderr
    assert not missing.exists()


def test_schedule_needs_a_prefect_server_and_a_valid_cron(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    config = REPO / "configs" / "tiny.yaml"
    result = distillery("schedule", config, "--cron", "0 3 * * 1", f"workdir={tmp_path}", env=env)
    assert result.returncode == 2 and "PREFECT_API_URL" in result.stderr
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    result = distillery("schedule", config, "--cron", "every monday", env=env)
    assert result.returncode == 2 and "not a valid cron expression" in result.stderr


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracking_server_fails_fast_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match=f"{uri} is unreachable after 2 retries"):
        MlflowTracker(uri, "anything", tmp_path)
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("bad", ["bad/name", "team:model", " ", ".."])
def test_an_invalid_registered_model_name_fails_at_start_up(bad, tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    with pytest.raises(MlflowException):  # MLflow would refuse it after the whole pipeline ran
        _validate_model_name(bad)
    result = distillery(
        "run",
        REPO / "configs" / "tiny.yaml",
        f"workdir={tmp_path}",
        f"tracking.registered_model={bad}",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config key 'tracking.registered_model'")
    assert not list(tmp_path.iterdir())  # stopped before any work


def test_valid_registered_model_names_pass_both_checks():
    from mlflow.utils.validation import _validate_model_name

    from distill.config import build_config

    for name in ("distillery-movie-reviews", "team.model_v2", "Model Name"):
        _validate_model_name(name)
        assert build_config({}, [f"tracking.registered_model={name}"]).tracking.registered_model
