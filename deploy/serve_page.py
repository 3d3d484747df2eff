"""The page `distillery serve` answers at `GET /`: a text box posting to `/predict`.

The page's script sends `{"texts": [text]}` as JSON, so `/predict` keeps one body format and
its limits; the labels come back with their probabilities. Same element ids as the static
page of deploy/web.py, so one browser test drives both.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def serve_page(labels: Sequence[str], model_version: object) -> str:
    title = escape(f"v{model_version}" if model_version is not None else "edge bundle")
    return (
        PAGE.replace("$title", title)
        .replace("$labels", escape(", ".join(labels)))
        .replace("$style", STYLE)
        .replace("$show_result", SHOW_RESULT_JS)
    )


# The look of both pages (this one and deploy/web.py's).
STYLE = """<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; min-height: 5rem; font: inherit; }
  table { border-collapse: collapse; margin-top: 1rem; }
  td, th { padding: .25rem .75rem; text-align: left; }
  tr.predicted { font-weight: bold; }
  meter { width: 12rem; }
  #status { color: #555; }
</style>
"""


# The result table of both pages (this one and deploy/web.py's): label, probability and a bar
# per row, the predicted one in bold; the browser tests read the same element ids and classes.
SHOW_RESULT_JS = """function show(result) {
  const rows = Object.entries(result.probabilities).map(([label, p]) => {
    const row = document.createElement('tr');
    row.dataset.label = label;
    row.className = label === result.label ? 'predicted' : '';
    const name = document.createElement('th');
    name.textContent = label;
    const value = document.createElement('td');
    value.className = 'probability';
    value.textContent = p.toFixed(8);
    const bar = document.createElement('td');
    bar.innerHTML = '<meter min="0" max="1"></meter>';
    bar.firstChild.value = p;
    row.append(name, value, bar);
    return row;
  });
  document.querySelector('#result tbody').replaceChildren(...rows);
  document.getElementById('result').dataset.label = result.label;
}
"""


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>distillery serve: $title</title>
<link rel="icon" href="data:,">
$style
</head>
<body>
<h1>Try the model</h1>
<p>Model <code>$title</code> (labels: $labels). The text is sent to this server's
<code>POST /predict</code>.</p>
<form id="form" action="/predict" method="post">
  <textarea id="text" name="text" placeholder="Type a text to classify"></textarea>
  <button id="classify" type="submit">Classify</button>
</form>
<p id="status" data-state="ready">Ready.</p>
<table id="result"><tbody></tbody></table>
<script>
const status = document.getElementById('status');

async function classify(text) {
  const begun = performance.now();
  const response = await fetch('/predict', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ texts: [text] }),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  const result = answer.results[0];
  if (result.error) throw new Error(result.error);
  return { ...result, ms: performance.now() - begun };
}

$show_result
document.getElementById('form').addEventListener('submit', async (event) => {
  event.preventDefault();
  status.dataset.state = 'busy';
  status.textContent = 'Classifying...';
  try {
    const result = await classify(document.getElementById('text').value);
    show(result);
    status.textContent = `${result.label} (${result.ms.toFixed(1)} ms)`;
  } catch (error) {
    status.textContent = 'Error: ' + error.message;
  }
  status.dataset.state = 'done';
});

window.distillery = { classify };
</script>
</body>
</html>
"""
