"""The runner: rows per (sample, method), resume after SIGKILL without loss or duplicates, torn lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from runner_job import CONFIG, tiny_model

from spantrace.errors import SpanTraceError
from spantrace.eval.runner import EvalConfig, ResultsFile, run_eval

JOB = Path(__file__).with_name("runner_job.py")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_row_per_sample_and_method(serial_rows):
    assert len(serial_rows) == CONFIG.n * len(CONFIG.methods)
    assert len({(row["sample_id"], row["method"]) for row in serial_rows}) == len(serial_rows)
    for row in serial_rows:
        assert 0.0 <= row["rise"] <= 1.0 and 0.0 <= row["mas"] <= 1.0 and 0.0 <= row["insertion_auc"] <= 1.0
        assert 0.0 <= row["recovery"] <= 1.0 and row["gold_tokens"] > 0
        assert len(row["deletion_curve"]) == CONFIG.steps + 1 and row["trace_s"] >= 0
        assert row["correct"] in (0.0, 1.0) and row["target_tokens"] == CONFIG.max_new_tokens


def test_resume_skips_done_rows_and_rejects_other_settings(tmp_path, tokenizer, serial_rows):
    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in serial_rows[:3]) + '{"sample_id": "torn')
    results = run_eval(tiny_model(tokenizer), CONFIG, out)
    rows = read_rows(out)
    assert len(rows) == len(results.rows) == len(serial_rows)
    key = lambda row: (row["sample_id"], row["method"])  # noqa: E731
    for resumed, serial in zip(sorted(rows, key=key), sorted(serial_rows, key=key), strict=True):
        assert resumed["rise"] == pytest.approx(serial["rise"], abs=1e-6)
    other = EvalConfig(**{**CONFIG.__dict__, "steps": 5})
    with pytest.raises(SpanTraceError, match="other settings"):
        run_eval(tiny_model(tokenizer), other, out)


def test_results_file_repairs_a_torn_line(tmp_path):
    out = tmp_path / "rows.jsonl"
    row = '{"config": "c", "method": "m", "sample_id": "a", "task": "t"}\n'
    out.write_text(row + row + '{"config": "c", "sample_')
    with ResultsFile(out) as results:
        assert results.done() == {("a", "m")} and len(results.rows) == 1
    assert out.read_text() == row + row


def test_sigkill_mid_run_then_resume(tmp_path, builtin_cache):
    out = tmp_path / "rows.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(JOB), str(out)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_text().count("\n") if out.exists() else 0
    assert killed, "the job finished before it could be killed"
    assert 3 <= written < CONFIG.n * len(CONFIG.methods)
    subprocess.run([sys.executable, str(JOB), str(out)], env=env, check=True)
    counts = Counter((row["sample_id"], row["method"]) for row in read_rows(out))
    assert len(counts) == CONFIG.n * len(CONFIG.methods) and set(counts.values()) == {1}
