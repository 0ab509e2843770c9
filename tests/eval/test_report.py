"""The report: mean ± s.e. by hand, the best method in bold, the sign test, and the CLI commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spantrace.cli import app
from spantrace.eval.report import markdown_report, mean_and_error, paired, sign_test, summarize


def rows() -> list[dict]:
    made = []
    for index, (ours, theirs) in enumerate([(0.1, 0.3), (0.2, 0.4), (0.3, 0.2)]):
        made.append({"task": "t", "sample_id": f"s{index}", "method": "flashtrace", "rise": ours, "model": "m"})
        made.append({"task": "t", "sample_id": f"s{index}", "method": "ifr", "rise": theirs, "model": "m"})
    made.append({"task": "t", "sample_id": "s3", "method": "ifr", "error": "boom", "model": "m"})
    return made


def test_mean_and_standard_error():
    assert mean_and_error([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / 3**0.5))
    assert mean_and_error([5.0]) == (5.0, 0.0)


def test_sign_test():
    assert sign_test(3, 0) == pytest.approx(0.25)  # 2 · (1/8)
    assert sign_test(2, 1) == pytest.approx(1.0)
    assert sign_test(0, 0) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 1024)


def test_summary_pairs_and_markdown():
    table = summarize(rows())
    assert table["t"]["flashtrace"]["rise"][0] == pytest.approx(0.2)
    assert table["t"]["ifr"]["rise"][2] == 3  # the error row is left out
    assert paired(rows(), "t", "ifr") == (2, 1, pytest.approx(1.0))
    text = markdown_report(rows())
    assert "| flashtrace | 3 | **0.200 ± 0.058** |" in text
    assert "1 row(s) with an error" in text and "| ifr | 2 | 1 | 1 |" in text


def test_report_command(tmp_path):
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    out = tmp_path / "report.md"
    result = CliRunner().invoke(app, ["report", str(results), "--markdown", str(out)])
    assert result.exit_code == 0, result.output
    assert "## t" in result.output and out.read_text().startswith("# Faithfulness results (m)")


def test_eval_command_rejects_an_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(tmp_path / "r.jsonl"),
                                      "--methods", "flashtrace,nope"])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output
