// Loads a distillery edge bundle with transformers.js in Node, offline, as an app would.
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { env, pipeline, Tensor } from '@huggingface/transformers';

// transformers.js picks the graph by dtype: 'q8' reads onnx/model_quantized.onnx, 'fp32'
// reads onnx/model.onnx. The bundle's manifest says which one it ships.
export function bundleDtype(bundleDir) {
  const manifest = JSON.parse(readFileSync(path.join(bundleDir, 'manifest.json'), 'utf8'));
  return manifest.model === 'onnx/model.onnx' ? 'fp32' : 'q8';
}

export function goldenExamples(bundleDir) {
  return JSON.parse(readFileSync(path.join(bundleDir, 'golden.json'), 'utf8')).examples;
}

export async function loadClassifier(bundleDir) {
  const folder = path.resolve(bundleDir);
  env.localModelPath = path.dirname(folder) + path.sep;
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  return pipeline('text-classification', path.basename(folder), {
    dtype: bundleDtype(folder),
    device: 'cpu',
    session_options: { intraOpNumThreads: 1 },
  });
}

// The token ids the model was trained on: at most `maxLength`, the closing special token kept.
// transformers.js 4.3.1 truncates after adding the special tokens, so an over-long text would
// lose its final [SEP] (</s>) and score differently from the Python runtime and from training.
export function truncatedIds(ids, maxLength) {
  return ids.length <= maxLength ? ids : [...ids.slice(0, maxLength - 1), ids[ids.length - 1]];
}

// The ids the graph gets for a text.
export function encode(tokenizer, text) {
  const encoded = tokenizer(text, { return_tensor: false });  // not truncated here
  return truncatedIds(encoded.input_ids, tokenizer.model_max_length);
}

// { label, probabilities: { label: p, ... } } for one text (batch 1), every label scored.
export async function classify(classifier, text) {
  const { tokenizer, model } = classifier;
  const ids = encode(tokenizer, text);
  const shape = [1, ids.length];
  const { logits } = await model({
    input_ids: new Tensor('int64', BigInt64Array.from(ids, BigInt), shape),
    attention_mask: new Tensor('int64', new BigInt64Array(ids.length).fill(1n), shape),
  });
  const scores = Array.from(logits.data, Number);
  const top = Math.max(...scores);
  const exp = scores.map((score) => Math.exp(score - top));
  const sum = exp.reduce((a, b) => a + b, 0);
  const labels = model.config.id2label;
  const probabilities = Object.fromEntries(exp.map((e, i) => [labels[i], e / sum]));
  const best = scores.indexOf(top);
  return { label: labels[best], probabilities };
}
