// `node ids.mjs BUNDLE TEXTS.json` prints the token ids transformers.js feeds the graph for each
// text (tests compare them with the Python runtime's).
import { readFileSync } from 'node:fs';
import { encode, loadClassifier } from './classify.mjs';

const [bundle, textsFile] = process.argv.slice(2);
const classifier = await loadClassifier(bundle);
const texts = JSON.parse(readFileSync(textsFile, 'utf8'));
console.log(JSON.stringify(texts.map((text) => encode(classifier.tokenizer, text))));
await classifier.dispose();
