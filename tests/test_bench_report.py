"""bench/report.py's results files: the same JSON as json.dumps, a list of scalars on one line."""

from __future__ import annotations

import json

from bench import report

RESULTS = {
    "rows": [{"size": 2000, "test_predictions": [0, 1, 1, 0]}, {"size": 4000, "seed": None}],
    "nested": {"pairs": [[1, 2], [3]], "empty": [], "none": {}},
    1: True,
    'quoted "key" é': 0.5,
}


def test_results_json_reads_back_as_json_dumps_would_write_it():
    assert json.loads(report.results_json(RESULTS)) == json.loads(json.dumps(RESULTS))


def test_a_list_of_scalars_is_one_line_and_a_list_of_objects_is_not():
    lines = report.results_json(RESULTS).splitlines()
    assert '      "test_predictions": [0, 1, 1, 0]' in lines
    assert '  "rows": [' in lines


def test_write_json_creates_the_folder_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "results" / "curve.json"
    report.write_json(path, RESULTS)
    assert path.read_text() == report.results_json(RESULTS) + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["curve.json"]
