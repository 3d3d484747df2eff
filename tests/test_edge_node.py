"""transformers.js in Node loads a freshly built bundle as it is and gives every golden example's
label, with probabilities within 1e-5 of the Python runtime (edge/js/test/bundle.test.mjs)."""

import json
import shutil

from tests.edge_js import run_node


def test_transformers_js_in_node_reproduces_the_golden_examples(tiny_bundle):
    result = run_node("--test", env={"DISTILLERY_BUNDLE": str(tiny_bundle)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 2" in result.stdout and "# skipped 0" in result.stdout


def test_the_node_test_fails_when_a_golden_probability_is_off(tiny_bundle, tmp_path):
    """The check can fail: shift one golden probability by 1e-4 (the runtime's own manifest
    is not consulted by transformers.js, so no re-signing is needed)."""
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    golden = json.loads((copy / "golden.json").read_text())
    probabilities = golden["examples"][0]["probabilities"]
    probabilities["positive"] += 1e-4
    (copy / "golden.json").write_text(json.dumps(golden))
    result = run_node("--test", env={"DISTILLERY_BUNDLE": str(copy)})
    assert result.returncode != 0
    assert "positive differs by" in result.stdout


def test_transformers_js_feeds_the_graph_the_python_runtimes_ids(tiny_bundle, tmp_path):
    """Token for token, over-long texts included: truncation keeps the closing [SEP] (plain
    transformers.js 4.3.1 would cut it; edge/js/classify.mjs truncates as training did)."""
    from deploy.runtime import load_bundle

    bundle = load_bundle(tiny_bundle)
    texts = [example["text"] for example in bundle.golden] + ["word " * 100]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    result = run_node("ids.mjs", str(tiny_bundle), str(tmp_path / "texts.json"))
    assert result.returncode == 0, result.stderr
    expected = [encoding.ids for encoding in bundle.tokenizer.encode_batch(texts)]
    expected = [ids[: ids.index(0)] if 0 in ids else ids for ids in expected]  # unpadded
    assert json.loads(result.stdout) == expected
    assert len(expected[-1]) == bundle.max_length and expected[-1][-1] == 3  # [SEP] kept
