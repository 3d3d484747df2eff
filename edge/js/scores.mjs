// Scoring a text with a loaded transformers.js classifier: the one copy shared by Node
// (classify.mjs) and the browser page that `distillery web` writes (served as vendor/scores.mjs,
// '@huggingface/transformers' resolved by the page's import map). No Node imports here.
import { Tensor } from '@huggingface/transformers';

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
