// Times a bundle in transformers.js (Node): `node bench.mjs BUNDLE TEXTS.json` prints
// {"first_ms": process start to the first prediction, "golden": [{label, probabilities}] for
// the bundle's golden texts, "latency_ms": one batch-1 prediction per text of TEXTS.json}.
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { classify, goldenExamples, loadClassifier } from './classify.mjs';

const [bundle, textsFile] = process.argv.slice(2);
const texts = JSON.parse(readFileSync(textsFile, 'utf8'));
const classifier = await loadClassifier(bundle);
const golden = [];
let firstMs;
for (const example of goldenExamples(bundle)) {
  golden.push(await classify(classifier, example.text));
  firstMs ??= performance.now();  // since the process started (node's time origin)
}
const latencyMs = [];
for (const text of texts) {
  const begun = performance.now();
  await classify(classifier, text);
  latencyMs.push(performance.now() - begun);
}
console.log(JSON.stringify({ first_ms: firstMs, golden, latency_ms: latencyMs }));
await classifier.dispose();
