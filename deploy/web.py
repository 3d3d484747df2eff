"""A static web page that classifies text in the browser with the bundle, fully offline.

`write_web_app(bundle, out)` writes `out/index.html`, the bundle's model files under
`out/model/`, and transformers.js with onnxruntime-web's WASM files (from the npm packages
installed in edge/js) under `out/vendor/`. Served from any static file server (nothing is
fetched from elsewhere), the page loads the model client-side and shows each label's
probability for the text typed in. Standard library only, like the runtime.
"""

from __future__ import annotations

import functools
import json
import shutil
from html import escape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template

from deploy.bundle_format import (
    CONFIG,
    FP32_MODEL,
    GOLDEN,
    MANIFEST,
    SPECIAL_TOKENS_MAP,
    TOKENIZER,
    TOKENIZER_CONFIG,
)
from deploy.runtime import BundleError, verify_bundle
from deploy.serve_page import SHOW_RESULT_JS, STYLE

EDGE_JS = Path(__file__).resolve().parents[1] / "edge" / "js"
NODE_MODULES = EDGE_JS / "node_modules"
# The page scores texts with the same module as the Node app (one copy of the truncation and
# softmax); its import map resolves that module's '@huggingface/transformers' to vendor/.
SCORES_MODULE = EDGE_JS / "scores.mjs"
# transformers.min.js bundles onnxruntime-web; it fetches the WASM backend from `wasmPaths`.
# By default that is the asyncify build (27 MB, WebGPU-capable); the page names the plain CPU
# build instead (14 MB): same results, and the page is ready in about 40% less time (measured
# in headless Chromium on the tiny bundle, 3 interleaved loads each: 1.7-2.2 s against
# 3.2-4.0 s on a loaded 2-core machine).
VENDOR_FILES = (
    "@huggingface/transformers/dist/transformers.min.js",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
)
MODEL_DIR = "model"
VENDOR_DIR = "vendor"
# What a static server must send for the page's files (Python's http.server guesses .mjs wrong).
CONTENT_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


def write_web_app(bundle: Path, out: Path, node_modules: Path = NODE_MODULES) -> Path:
    """Write the page for a bundle folder into `out` (created or refreshed); return `out`."""
    manifest = verify_bundle(bundle)
    if manifest.legacy:
        raise BundleError(f"bundle {bundle} has the format-1 layout, which browsers cannot load")
    missing = [name for name in VENDOR_FILES if not (node_modules / name).is_file()]
    if missing:
        raise BundleError(
            f"{node_modules} lacks {missing[0]}: run `make setup-js` "
            "(npm ci --ignore-scripts in edge/js) first"
        )
    model = str(manifest.model)
    for folder in (MODEL_DIR, VENDOR_DIR):  # nothing left over from an earlier page
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in (CONFIG, TOKENIZER, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GOLDEN, MANIFEST, model):
        (out / MODEL_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle / name, out / MODEL_DIR / name)
    (out / VENDOR_DIR).mkdir(parents=True, exist_ok=True)
    for name in VENDOR_FILES:
        shutil.copyfile(node_modules / name, out / VENDOR_DIR / Path(name).name)
    shutil.copyfile(SCORES_MODULE, out / VENDOR_DIR / SCORES_MODULE.name)
    labels = json.loads((bundle / CONFIG).read_text())["id2label"]
    title = f"{manifest.mlflow_run_id or 'distillery'} v{manifest.model_version or '?'}"
    page = PAGE.substitute(
        title=escape(title),
        dtype="fp32" if model == FP32_MODEL else "q8",
        labels=escape(", ".join(labels[str(i)] for i in range(len(labels)))),
        style=STYLE,
        show_result=SHOW_RESULT_JS,
    )
    (out / "index.html").write_text(page)
    return out


class _StaticHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **CONTENT_TYPES}
    isolated = False

    def end_headers(self) -> None:
        if self.isolated:  # cross-origin isolation: lets onnxruntime-web use WASM threads
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


def static_server(
    folder: Path, host: str = "127.0.0.1", port: int = 0, isolated: bool = False
) -> ThreadingHTTPServer:
    """A bound static file server for the page's folder (port 0 picks a free one); call
    `serve_forever()`. `isolated` sends the COOP/COEP headers that allow WASM threads."""
    handler = type("Handler", (_StaticHandler,), {"isolated": isolated})
    return ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(folder)))


PAGE = Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>distillery: $title</title>
<link rel="icon" href="data:,">
$style
</head>
<body>
<h1>Text classification in your browser</h1>
<p>Model <code>$title</code> (labels: $labels), run by transformers.js on WebAssembly:
nothing you type leaves this page.</p>
<form id="form">
  <textarea id="text" name="text" placeholder="Type a text to classify"></textarea>
  <button id="classify" type="submit" disabled>Classify</button>
</form>
<p id="status">Loading the model...</p>
<table id="result"><tbody></tbody></table>
<script type="importmap">
{"imports": {"@huggingface/transformers": "./vendor/transformers.min.js"}}
</script>
<script type="module">
import { env, pipeline } from '@huggingface/transformers';
import { classify as score } from './vendor/scores.mjs';

// A path, not a full URL: transformers.js checks which tokenizer files exist only for paths.
const here = new URL('./', location.href).pathname;
env.allowRemoteModels = false;  // never the Hub: the model is served beside this page
env.allowLocalModels = true;
env.localModelPath = here;
env.backends.onnx.wasm.wasmPaths = {  // the plain CPU build: no WebGPU, half the size
  mjs: new URL('./vendor/ort-wasm-simd-threaded.mjs', location.href).href,
  wasm: new URL('./vendor/ort-wasm-simd-threaded.wasm', location.href).href,
};
// More than one WASM thread needs a cross-origin-isolated page (COOP/COEP headers).
env.backends.onnx.wasm.numThreads = self.crossOriginIsolated
  ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

const status = document.getElementById('status');
const button = document.getElementById('classify');
const started = performance.now();
let classifier;
try {
  classifier = await pipeline('text-classification', 'model', { dtype: '$dtype' });
} catch (error) {
  status.textContent = 'The model failed to load: ' + error;
  throw error;
}

let firstResultMs;  // navigation start to the first prediction: the page's cold start

// { label, probabilities, ms } for one text; every label is scored (edge/js/scores.mjs).
async function classify(text) {
  const begun = performance.now();
  const result = await score(classifier, text);
  const ms = performance.now() - begun;
  firstResultMs ??= performance.now();
  return { ...result, ms };
}

$show_result
document.getElementById('form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = document.getElementById('text').value;
  if (!text.trim()) { status.textContent = 'Type a text first.'; return; }
  button.disabled = true;
  status.textContent = 'Classifying...';
  status.dataset.state = 'busy';
  const result = await classify(text);
  show(result);
  status.textContent = `$${result.label} ($${result.ms.toFixed(1)} ms)`;
  status.dataset.state = 'done';
  button.disabled = false;
});

const loadMs = performance.now() - started;
const threads = env.backends.onnx.wasm.numThreads;
window.distillery = { classify, loadMs, threads, firstResultMs: () => firstResultMs };
button.disabled = false;
status.textContent = 'Ready.';
status.dataset.state = 'ready';
</script>
</body>
</html>
"""
)
