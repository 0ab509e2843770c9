"""The results file's guarantees: nothing lost, nothing duplicated, no file changed that spantrace did not write,
one writer at a time, every bad setting or path refused (one line) before any work."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from runner_job import CONFIG, tiny_model
from typer.testing import CliRunner

import spantrace.cli.evaluate
import spantrace.eval.results
from spantrace.cli import app
from spantrace.errors import InputError, SpanError
from spantrace.eval.report import load_rows
from spantrace.eval.results import ResultsFile, ResultsFileError, read_results
from spantrace.eval.runner import EvalConfig, run_eval

JOB = Path(__file__).with_name("runner_job.py")
ROW = '{"config": "c", "method": "m", "sample_id": "a", "task": "t"}\n'
NOT_RESULTS = {  # files people point --out at by mistake
    "config.json": b'{"model": "x", "lr": 0.1}',  # one JSON object, no final newline
    "notes.txt": b"notes on the run\nsecond line\nno newline at the end",
    "blob.bin": bytes(range(256)) * 4,
    "array.jsonl": b"[1, 2, 3]\n",
    "other.jsonl": b'{"sample_id": "a", "method": "m"}\n',  # JSON objects, but not spantrace rows
    "torn_only.jsonl": b'{"config": "c", "sam',  # the start of a row and nothing else: no proof it is ours
    "mixed.jsonl": (ROW + "my own note\n" + ROW).encode(),  # rows around a line that is not one
}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def no_model(*_, **__):
    raise AssertionError("the model was loaded before the mistake was found")


@pytest.mark.parametrize("name", sorted(NOT_RESULTS))
def test_a_file_that_is_not_a_results_file_is_refused_untouched(tmp_path, name):
    out = tmp_path / name
    out.write_bytes(NOT_RESULTS[name])
    with pytest.raises(ResultsFileError, match="left untouched") as error:
        ResultsFile(out)
    assert "\n" not in str(error.value)
    assert out.read_bytes() == NOT_RESULTS[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no lock file left behind either


@pytest.mark.parametrize("name", ["config.json", "blob.bin"])
def test_eval_command_refuses_it_before_loading_the_model(tmp_path, monkeypatch, name):
    out = tmp_path / name
    out.write_bytes(NOT_RESULTS[name])
    monkeypatch.setattr(spantrace.cli.evaluate, "load", no_model)
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(out), "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "is not a spantrace results file" in result.output
    assert out.read_bytes() == NOT_RESULTS[name]


def test_a_torn_last_line_is_cut_only_among_rows(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text(ROW + '{"config": "c", "sam')
    with ResultsFile(out) as results:
        assert results.done() == {("a", "m")}
    assert out.read_text() == ROW


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "rows.jsonl"
    with ResultsFile(out) as first:
        with pytest.raises(ResultsFileError, match=f"another run \\(PID {os.getpid()}\\)"):
            ResultsFile(out)
        first.append(json.loads(ROW))
    with ResultsFile(out) as again:  # free once the first one closed
        assert again.done() == {("a", "m")}
    assert out.read_text() == ROW


def test_a_run_that_wrote_nothing_leaves_no_file(tmp_path):
    out, kept = tmp_path / "new.jsonl", tmp_path / "empty.jsonl"
    kept.write_bytes(b"")
    with ResultsFile(out), ResultsFile(kept):
        assert out.exists()  # created (and so checked writable) when opened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]  # the user's empty file stays


def test_a_killed_writer_leaves_no_lock(tmp_path):
    out = tmp_path / "rows.jsonl"
    code = "import sys, time; from spantrace.eval.results import ResultsFile; f = ResultsFile(sys.argv[1]); " \
           "print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ResultsFileError, match=f"PID {holder.pid}"):
        ResultsFile(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with ResultsFile(out) as results:  # the kernel dropped the lock with the process
        assert results.rows == []


def test_two_runs_on_one_file_cannot_both_write(tmp_path, builtin_cache):
    """A second writer is refused while the first holds the file (here the test process holds it, so the two
    always overlap, however fast a run is); once the first lets go, a run writes every row once."""
    out = tmp_path / "rows.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with ResultsFile(out):  # the first writer: this process, holding the lock
        refused = subprocess.run([sys.executable, str(JOB), str(out)], env=env, capture_output=True, text=True)
        assert refused.returncode != 0, refused.stderr
        assert f"is being written by another run (PID {os.getpid()})" in refused.stderr
        assert rows_of(out) == []  # the refused run wrote nothing
    subprocess.run([sys.executable, str(JOB), str(out)], env=env, check=True)
    counts = Counter((row["sample_id"], row["method"]) for row in rows_of(out))
    assert len(counts) == CONFIG.n * len(CONFIG.methods) and set(counts.values()) == {1}


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path, builtin_cache):
    out = tmp_path / "rows.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    chance = random.Random(27)
    total = CONFIG.n * len(CONFIG.methods)
    for _ in range(2):
        before = out.read_text().count("\n") if out.exists() else 0
        wanted = min(total - 1, before + chance.randint(1, 3))  # kill after a few new rows, at a random moment
        process = subprocess.Popen([sys.executable, str(JOB), str(out)], env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_text().count("\n") >= wanted:
                break
            time.sleep(0.005)
        time.sleep(chance.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        counts = Counter((row["sample_id"], row["method"]) for row in rows_of(out))
        assert set(counts.values()) == {1}  # no duplicates, every line whole, at every kill
    subprocess.run([sys.executable, str(JOB), str(out)], env=env, check=True)
    counts = Counter((row["sample_id"], row["method"]) for row in rows_of(out))
    assert len(counts) == total and set(counts.values()) == {1}


def test_a_full_disk_cuts_the_half_row_and_the_run_resumes(tmp_path, tokenizer, serial_rows, monkeypatch):
    out = tmp_path / "rows.jsonl"
    real_write, calls = os.write, []

    def filling_disk(fd, data):
        if data.startswith(b"{"):  # a row (the lock file's PID is written through here too)
            calls.append(len(data))
        if len(calls) == 3 and data.startswith(b"{"):  # the third row: half of it is written, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(spantrace.eval.results.os, "write", filling_disk)
    with pytest.raises(ResultsFileError, match="No space left on device.*run the same command again"):
        run_eval(tiny_model(tokenizer), CONFIG, out)
    assert out.read_text().count("\n") == 2 and out.read_text().endswith("}\n")  # two whole rows, no half
    monkeypatch.setattr(spantrace.eval.results.os, "write", real_write)
    run_eval(tiny_model(tokenizer), CONFIG, out)
    keys = [(row["sample_id"], row["method"]) for row in rows_of(out)]
    assert len(keys) == len(set(keys)) == len(serial_rows)


def test_a_short_write_is_taken_back(tmp_path, monkeypatch):
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b"")  # there before the run, so it stays after it
    real_write = os.write
    monkeypatch.setattr(spantrace.eval.results.os, "write", lambda fd, data: real_write(fd, data[:10]))
    with ResultsFile(out) as results, pytest.raises(ResultsFileError, match="No space left"):
        results.append(json.loads(ROW))
    assert out.read_bytes() == b""


def test_an_unwritable_folder_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_open = os.open

    def read_only(path, flags, *args):  # what a read-only folder answers (this suite may run as root)
        if Path(path).parent == folder and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(spantrace.eval.results.os, "open", read_only)
    monkeypatch.setattr(spantrace.cli.evaluate, "load", no_model)
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(folder / "r.jsonl"), "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "Permission denied" in result.output and "choose a writable --out" in result.output
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(
    os.geteuid() == 0,  # allowed in CI by its reason's first words (tests/conftest.py ALLOWED_SKIPS)
    reason="documented root-only skip: root writes into read-only folders, so only a normal user can check this",
)
def test_a_really_read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ResultsFileError, match="choose a writable --out"):
            ResultsFile(folder / "r.jsonl")
    finally:
        folder.chmod(0o755)


def test_a_bad_span_is_refused_before_anything(tmp_path, monkeypatch):
    with pytest.raises(SpanError, match="not a valid regular expression"):
        EvalConfig(task="niah_single", span="regex:(")
    out = tmp_path / "r.jsonl"
    monkeypatch.setattr(spantrace.cli.evaluate, "load", no_model)
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(out), "--span", "regex:(", "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "regular expression" in result.output
    assert not out.exists()


def test_other_settings_say_what_to_do(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(ROW.replace('"c"', f'"{EvalConfig(task="niah_single", steps=5).fingerprint()}"'))
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(out), "-q"])
    assert result.exit_code == 2 and "holds rows made with other settings" in result.output
    assert "resume with the options that made them, or give --out a new file" in result.output


def test_methods_named_twice_are_evaluated_once(tmp_path, monkeypatch):
    config = EvalConfig(task="niah_single", methods=("attention-last", "ifr", "attention-last"))
    assert config.methods == ("attention-last", "ifr")
    seen = {}
    monkeypatch.setattr(spantrace.cli.evaluate, "load", lambda model, device=None: "a model")
    monkeypatch.setattr(spantrace.eval.runner, "run_eval", lambda model, config, *_, **__: seen.update(config=config))
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(tmp_path / "r.jsonl"),
                                      "--methods", "attention-last,attention-last", "-q"])
    assert result.exit_code == 0, result.output
    assert seen["config"].methods == ("attention-last",)


def test_settings_are_checked_when_the_config_is_made():
    import numpy as np

    config = EvalConfig(task="niah_single", n=np.int64(3), hops=np.int32(2))
    assert config.n == 3 and type(config.n) is int and type(config.hops) is int
    assert config.fingerprint() == EvalConfig(task="niah_single", n=3, hops=2).fingerprint()
    for bad in ({"hops": -1}, {"steps": 0}, {"n": 2.5}, {"recovery_frac": "x"}, {"methods": ("nope",)},
                {"scope": "everything"}, {"span": "sentence:x"}):
        with pytest.raises((InputError, SpanError)):
            EvalConfig(task="niah_single", **bad)


def test_no_method_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(tmp_path / "r.jsonl"),
                                      "--methods", ","])
    assert result.exit_code == 2 and result.output.startswith("Error: --methods names no method")
    assert result.output.count("\n") == 1 and not (tmp_path / "r.jsonl").exists()
    with pytest.raises(InputError, match="no methods to evaluate"):
        EvalConfig(task="niah_single", methods=())


def test_reading_skips_and_counts_lines_that_are_not_rows(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(ROW.encode() + b"\xff\xfe\n" + b"not json\n" + b"[1]\n" + b'{"task": "t"}\n' + ROW.encode()
                     + b'{"config": "c", "sa')
    loaded = read_results(path)
    assert len(loaded.rows) == 2 and [number for number, _ in loaded.skipped] == [2, 3, 4, 5] and loaded.torn
    with pytest.warns(UserWarning, match="skipped 4 line"):
        assert len(load_rows(path)) == 2


@pytest.mark.parametrize("content", [NOT_RESULTS["blob.bin"], b"\xff\xfe\n", b'[1]\n{"task": 3}\n', b""])
def test_report_on_a_file_without_rows_is_one_line(tmp_path, content):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ")


def test_report_warns_about_skipped_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    row = {"task": "t", "sample_id": "s", "method": "flashtrace", "config": "c", "rise": 0.5, "model": "m"}
    path.write_text(json.dumps(row) + "\nnot a row\n")
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 0 and "Warning: " in result.output and "skipped 1 line(s)" in result.output


def test_report_skips_rows_whose_metrics_are_not_numbers(tmp_path):
    path = tmp_path / "r.jsonl"
    row = {"task": "t", "sample_id": "s", "method": "flashtrace", "config": "c", "rise": 0.5, "model": "m"}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "sample_id": "x", "rise": "high"}) + "\n")
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 0 and "skipped 1 line(s)" in result.output and "| flashtrace | 1 |" in result.output
    path.write_text(json.dumps({**row, "rise": [1]}) + "\n")
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 2 and result.output.startswith("Error: ") and "no usable row" in result.output


def test_report_outputs_are_checked_before_the_work(tmp_path, monkeypatch):
    import spantrace.eval.report

    path = tmp_path / "r.jsonl"
    path.write_text(ROW)
    monkeypatch.setattr(spantrace.eval.report, "load_rows", no_model)
    result = CliRunner().invoke(app, ["report", str(path), "--markdown", str(tmp_path / "missing" / "r.md")])
    assert result.exit_code == 2 and "does not exist" in result.output and result.output.count("\n") == 1
