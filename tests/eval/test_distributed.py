"""The Ray runner on a local cluster of 2 workers: the same rows as the serial run, and it resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from runner_job import CONFIG, load_tiny_model

from spantrace.eval.distributed import run_eval_ray

VARYING = {"trace_s", "peak_memory_mb"}  # wall time and process memory differ from run to run


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")  # checked when a test runs, not while collecting (CI fails on this skip)
    tests = Path(__file__).resolve().parents[1]
    # Workers import the loader (tests/eval/runner_job.py) by name, as any user's module would be.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{tests / 'eval'}:{tests}", "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_two_workers_give_the_serial_rows(cluster, tmp_path, serial_rows):
    out = tmp_path / "ray.jsonl"
    seen = []
    run_eval_ray(load_tiny_model, CONFIG, out, workers=2, on_row=seen.append)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(seen) == len(serial_rows) == CONFIG.n * len(CONFIG.methods)
    by_key = {(row["sample_id"], row["method"]): row for row in rows}
    assert len(by_key) == len(rows)
    for expected in serial_rows:
        row = by_key[(expected["sample_id"], expected["method"])]
        assert set(row) == set(expected)
        for key in set(row) - VARYING:
            assert same_value(row[key], expected[key]), (key, row[key], expected[key])


def test_resumes_a_partial_file(cluster, tmp_path, serial_rows):
    out = tmp_path / "ray.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in serial_rows[:4]))
    run_eval_ray(load_tiny_model, CONFIG, out, workers=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    keys = [(row["sample_id"], row["method"]) for row in rows]
    assert len(keys) == len(set(keys)) == len(serial_rows)
    assert rows[:4] == serial_rows[:4]  # kept as they were, not redone
