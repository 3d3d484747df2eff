"""Edge targets benchmark: one bundle, every runtime that loads it as it is.

    .venv/bin/python -m bench.edge_targets [--bundle PROFILE=FOLDER ...] [--texts 50]

Runtimes: `python`, `ort_format` (the `.ort` graph), `transformers_js_node` (edge/js) and the
`distillery web` page in headless Chromium (one WASM thread, or cross-origin isolated). Without
--bundle, a bundle of configs/tiny.yaml. Writes bench/results/edge_targets.json and the
"edge-targets" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import report as bench
from deploy.runtime import Bundle, load_bundle, predict, with_graph
from deploy.web import static_server, write_web_app
from distill.config import load_config
from distill.data import load_examples

JS = bench.REPO / "edge" / "js"
TOKENS = 25
NOT_MEASURED = {
    "optimum": "optimum-onnx (0.1.0, the newest) requires transformers<4.58; this stack pins "
    "transformers 5.25.0, so it does not install beside it (checked in a throwaway venv)",
}


def latency_texts(bundle: Bundle, count: int, tokens: int = TOKENS) -> list[str]:
    """`count` movie-review sentences that the bundle's tokenizer turns into exactly `tokens`
    ids (special tokens included)."""
    config = load_config(bench.REPO / "configs" / "tiny.yaml", ["workdir=/tmp/unused"])
    chosen = []
    for text in load_examples(config.data).texts["all"]:
        if len(bundle.tokenizer.encode(text).ids) == tokens:
            chosen.append(text)
            if len(chosen) == count:
                return chosen
    raise SystemExit(f"only {len(chosen)} sentences have {tokens} tokens")


def compare(golden: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]) -> dict:
    """Label agreement (fraction) and largest probability difference against the golden ones."""
    agree = sum(r["label"] == g["label"] for g, r in zip(golden, results, strict=True))
    worst = max(
        abs(r["probabilities"][label] - p)
        for g, r in zip(golden, results, strict=True)
        for label, p in g["probabilities"].items()
    )
    return {"agreement": agree / len(golden), "max_prob_diff": worst}


def python_runtimes(folder: Path, texts: list[str]) -> list[dict[str, Any]]:
    """The Python runtime and the ORT-format graph, timed interleaved text by text."""
    bundle = load_bundle(folder, threads=1)
    ort = with_graph(bundle, folder / str(bundle.manifest.mobile_model), threads=1)
    golden = list(bundle.golden)
    runtimes = {"python": bundle, "ort_format": ort}
    rows = {  # the golden texts first: a warm-up for the timing
        name: compare(golden, [predict(b, [g["text"]])[0] for g in golden])
        for name, b in runtimes.items()
    }
    timings: dict[str, list[float]] = {name: [] for name in runtimes}
    for text in texts:
        for name, loaded in runtimes.items():
            started = time.perf_counter()
            predict(loaded, [text])
            timings[name].append((time.perf_counter() - started) * 1000)
    return [
        {
            "runtime": name,
            **rows[name],
            "p50_ms": statistics.median(timings[name]),
            "cold_start_s": statistics.median(
                seconds for seconds, _ in bench.cold_starts(folder, golden[0]["text"], 3, mobile)
            ),
        }
        for name, mobile in (("python", False), ("ort_format", True))  # new processes
    ]


def node(script: str, *args: object) -> dict[str, Any]:
    """The JSON that `node SCRIPT ARGS` (in edge/js) prints."""
    command = ["node", script, *map(str, args)]
    return json.loads(subprocess.run(command, cwd=JS, capture_output=True, text=True,
                                      check=True, timeout=600).stdout)  # fmt: skip


def node_runtime(folder: Path, texts_file: Path, golden: list[dict]) -> dict[str, Any]:
    spawned = time.time()
    result = node("bench.mjs", folder, texts_file)
    return {
        "runtime": "transformers_js_node",
        **compare(golden, result["golden"]),
        "p50_ms": statistics.median(result["latency_ms"]),
        # node's clock starts with the process; `process_wall_s` bounds it from above.
        "cold_start_s": result["first_ms"] / 1000,
        "process_wall_s": time.time() - spawned,
    }


def browser_runtime(folder: Path, texts: list[str], scratch: Path, isolated: bool) -> dict:
    server = static_server(write_web_app(folder, scratch / "web"), isolated=isolated)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    golden = json.loads((folder / "golden.json").read_text())["examples"]
    texts_file = scratch / "browser-texts.json"
    texts_file.write_text(json.dumps([g["text"] for g in golden] + texts))
    try:
        result = node("browser.mjs", f"http://127.0.0.1:{server.server_address[1]}/", texts_file)
    finally:
        server.shutdown()
        server.server_close()
    if result["blocked"] or result["errors"]:
        raise SystemExit(f"the page fetched from elsewhere or failed: {result}")
    # page_ready_s: navigation to ready (scripts, model and WASM fetched and compiled)
    return {
        "runtime": "browser_wasm_isolated" if isolated else "browser_wasm_1_thread",
        **compare(golden, result["results"][: len(golden)]),
        "p50_ms": statistics.median(r["ms"] for r in result["in_page"][len(golden) :]),
        "cold_start_s": result["page_cold_start_ms"] / 1000,
        "page_ready_s": result["load_ms"] / 1000, "pipeline_load_s": result["pipeline_ms"] / 1000,
        "wasm_threads": result["threads"], "cross_origin_isolated": result["isolated"],
    }  # fmt: skip


def measure(profile: str, folder: Path, count: int, scratch: Path) -> dict[str, Any]:
    scratch.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(folder, threads=1)
    texts = latency_texts(bundle, count)
    texts_file = scratch / f"{profile}-texts.json"
    texts_file.write_text(json.dumps(texts))
    golden = list(bundle.golden)
    runtimes = python_runtimes(folder, texts)
    runtimes.append(node_runtime(folder, texts_file, golden))
    for isolated in (False, True):
        runtimes.append(browser_runtime(folder, texts, scratch / f"{profile}-{isolated}", isolated))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    graph, ort = (folder / str(bundle.manifest.model), folder / str(bundle.manifest.mobile_model))
    return {
        "profile": profile, "bundle": str(folder), "bundle_bytes": size,
        "graph_bytes": graph.stat().st_size, "ort_bytes": ort.stat().st_size,
        "golden_examples": len(golden), "latency_texts": len(texts), "tokens": TOKENS,
        "runtimes": runtimes,
    }  # fmt: skip


def report(results: dict[str, Any]) -> str:
    rows = []
    for bundle in results["bundles"]:
        python = next(r for r in bundle["runtimes"] if r["runtime"] == "python")
        rows += [
            [bundle["profile"], r["runtime"], f"{r['agreement']:.0%}", f"{r['max_prob_diff']:.1e}",
             f"{r['p50_ms']:.2f}", f"{r['p50_ms'] / python['p50_ms']:.1f}x",
             f"{r['cold_start_s']:.2f}"]
            for r in bundle["runtimes"]
        ]  # fmt: skip
    sizes = "; ".join(
        f"{b['profile']}: bundle {b['bundle_bytes'] / 1e6:.2f} MB, graph "
        f"{b['graph_bytes'] / 1e6:.2f} MB, ORT copy {b['ort_bytes'] / 1e6:.2f} MB"
        for b in results["bundles"]
    )
    pages = "; ".join(
        f"{b['profile']} {r['runtime']}: page ready {r['page_ready_s']:.2f} s "
        f"(pipeline() {r['pipeline_load_s']:.2f} s), {r['wasm_threads']} WASM thread(s)"
        for b in results["bundles"]
        for r in b["runtimes"]
        if "page_ready_s" in r
    )
    missing = "; ".join(f"{k}: {v}" for k, v in results["not_measured"].items())
    load = ", ".join(f"{value:.1f}" for value in results["load_average"])
    return bench.section(
        "## Edge targets (edge-targets)",
        bench.markdown_table(
            "bundle | runtime | golden agreement | max prob diff | p50 ms (batch 1, 25 tokens)"
            " | vs python | cold start s",
            rows,
        ),
        f"Browser: {pages}.  \nSizes: {sizes}.  \nNot measured: {missing}.",
        more=[f"Load average before: {load} (a shared machine)"],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", default=[], help="PROFILE=FOLDER")
    parser.add_argument("--texts", type=int, default=50)
    parser.add_argument("--out", type=Path, default=bench.RESULTS / "edge_targets.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="edge-targets-") as tmp:
        scratch = Path(tmp)
        bundles = [item.split("=", 1) for item in args.bundle]
        bundles = bundles or [("tiny", bench.tiny_bundle(scratch / "tiny-run"))]
        measured = [
            measure(profile, Path(folder).resolve(), args.texts, scratch / profile)
            for profile, folder in bundles
        ]
    results = {"bundles": measured, "not_measured": NOT_MEASURED, "load_average": os.getloadavg()}
    bench.publish(args.out, results, "edge-targets", lambda: report(results))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
