// Loads a distillery edge bundle with transformers.js in Node, offline, as an app would.
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { env, pipeline } from '@huggingface/transformers';

export { classify, encode, truncatedIds } from './scores.mjs';

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
