// The bundle named by DISTILLERY_BUNDLE gives every golden example's label, and probabilities
// within 1e-5 of the Python runtime that wrote them, in transformers.js (Node, onnxruntime-node).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classify, goldenExamples, loadClassifier } from '../classify.mjs';

const TOLERANCE = 1e-5;
const bundle = process.env.DISTILLERY_BUNDLE;

test('transformers.js reproduces the golden examples', { skip: !bundle && 'set DISTILLERY_BUNDLE' }, async () => {
  const classifier = await loadClassifier(bundle);
  const examples = goldenExamples(bundle);
  assert.ok(examples.length > 0, 'the bundle has golden examples');
  for (const example of examples) {
    const result = await classify(classifier, example.text);
    const where = `golden text ${JSON.stringify(example.text.slice(0, 40))}`;
    assert.equal(result.label, example.label, where);
    assert.deepEqual(Object.keys(result.probabilities).sort(), Object.keys(example.probabilities).sort(), where);
    for (const [label, expected] of Object.entries(example.probabilities)) {
      const difference = Math.abs(result.probabilities[label] - expected);
      assert.ok(difference <= TOLERANCE, `${where}: ${label} differs by ${difference}`);
    }
  }
  await classifier.dispose();
});

test('an over-long text keeps its closing special token, as in training', async () => {
  const { truncatedIds } = await import('../classify.mjs');
  assert.deepEqual(truncatedIds([101, 7, 8, 9, 102], 4), [101, 7, 8, 102]);
  assert.deepEqual(truncatedIds([101, 7, 102], 4), [101, 7, 102]);
});
