#!/usr/bin/env bash
# Times the README's first command on a fresh clone: setup, the default run, an unchanged rerun.
# Usage: bench/fresh_clone.sh [RESULT_JSON]   (default bench/results/fresh_clone.json)
# Run it on a quiet machine: every number is wall-clock time.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
out=${1:-$repo/bench/results/fresh_clone.json}
clone=$(mktemp -d)/distillery
git clone -q "$repo" "$clone"
cd "$clone"

seconds() {
  local start=$EPOCHREALTIME
  "$@" > "$clone/.last.log" 2>&1 || { tail -50 "$clone/.last.log"; exit 1; }
  awk "BEGIN {print $EPOCHREALTIME - $start}"
}

setup_s=$(seconds make setup)
run_s=$(seconds make run)
cp .last.log first_run.log
cp runs/movie_reviews/summary.json first_summary.json
rerun_s=$(seconds make run)
summary=runs/movie_reviews/summary.json
python3 - "$out" "$setup_s" "$run_s" "$rerun_s" "$summary" "$(git rev-parse HEAD)" <<'PY'
import json, platform, subprocess, sys, datetime
out, setup_s, run_s, rerun_s, summary, commit = sys.argv[1:]
s = json.load(open(summary))
first = json.load(open("first_summary.json"))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
result = {
    "command": "bench/fresh_clone.sh",
    "date": datetime.date.today().isoformat(),
    "commit": commit,
    "machine": f"{cpu}, {subprocess.check_output(['nproc']).decode().strip()} cores, {platform.system()}",
    "setup_seconds": float(setup_s),
    "first_run_seconds": float(run_s),
    "first_run_with_setup_seconds": float(setup_s) + float(run_s),
    "unchanged_rerun_seconds": float(rerun_s),
    "rerun_fraction": float(rerun_s) / float(run_s),
    "rerun_stages_reused": all(v["reused"] for v in s["stages"].values()),
    "summary": {k: v for k, v in first.items() if k != "stages"},
    "stage_seconds_first_run": {k: v["seconds"] for k, v in first["stages"].items()},
    "stage_seconds_rerun": {k: v["seconds"] for k, v in s["stages"].items()},
}
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
PY
echo "clone kept at $clone (first_run.log has the first run's output)"
