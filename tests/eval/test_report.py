"""The report: mean ± s.e. by hand, the best method in bold, the sign test, HTML, figures and the CLI commands."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from spantrace.cli import app
from spantrace.errors import InputError
from spantrace.eval.plots import metric_bars, metric_vs_length
from spantrace.eval.report import (
    complete_samples,
    devices,
    html_report,
    markdown_report,
    mean_and_error,
    overview,
    paired,
    report_tables,
    row_device,
    sign_test,
    summarize,
)


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
    assert "1 row(s) of samples not yet scored" in text and "| ifr | 2 | 1 | 1 |" in text  # s3 has no flashtrace
    errored = rows() + [{"task": "t", "sample_id": "s3", "method": "flashtrace", "rise": 0.5, "model": "m"}]
    assert "1 row(s) with an error are left out" in markdown_report(errored)


def test_a_tie_marks_no_best():
    tied = [{**row, "correct": 1.0} for row in rows() if not row.get("error")]
    text = markdown_report(tied)
    assert "**1.000 ± 0.000**" not in text and "1.000 ± 0.000" in text


def many_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    made = []
    for task in ("a", "b"):
        for index in range(8):
            for method in ("flashtrace", "ifr", "rollout"):
                made.append({"task": task, "sample_id": f"{task}{index}", "method": method, "model": "m",
                             "rise": float(rng.random()), "mas": float(rng.random()),
                             "insertion_auc": float(rng.random()), "recovery": float(rng.random()),
                             "target_tokens": int(rng.integers(5, 60))})
    return made


def png_shape(png: bytes) -> tuple[int, ...]:
    import matplotlib.image

    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return matplotlib.image.imread(io.BytesIO(png), format="png").shape


def test_figures_are_pngs():
    height, width, _ = png_shape(metric_bars(many_rows()))
    assert width > 2 * height  # one panel per metric, side by side
    assert len(png_shape(metric_vs_length(many_rows(), bins=3))) == 3
    with pytest.raises(InputError, match="no row has both"):
        metric_vs_length(rows())  # no target_tokens
    with pytest.raises(InputError, match="nothing to plot"):
        metric_bars([{"task": "t", "sample_id": "s", "method": "ifr", "model": "m", "trace_s": 1.0}])


def test_html_report_escapes_and_embeds():
    made = [{**row, "model": "<script>alert(1)</script>"} for row in rows()]
    page = html_report(made, {"a <b> figure": b"\x89PNG fake"})
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<td class="best">0.200 ± 0.058</td>' in page  # FlashTrace's RISE is the best
    assert "data:image/png;base64,iVBORyBmYWtl" in page and "a &lt;b&gt; figure" in page
    assert "<td>ifr</td><td>2</td><td>1</td><td>1</td>" in page  # wins, losses, p of the sign test


def test_report_command(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    made = [{**row, "config": "c"} for row in many_rows()]  # rows as the runner writes them carry their config
    first.write_text("".join(json.dumps(row) + "\n" for row in made if row["task"] == "a"))
    second.write_text("".join(json.dumps(row) + "\n" for row in made if row["task"] == "b"))
    out, page, figures = tmp_path / "report.md", tmp_path / "report.html", tmp_path / "figures"
    result = CliRunner().invoke(app, ["report", str(first), str(second), "--markdown", str(out), "--html", str(page),
                                      "--plots", str(figures)])
    assert result.exit_code == 0, result.output
    assert "## a" in result.output and "## b" in result.output
    assert out.read_text().startswith("# Faithfulness results (m)")
    assert page.read_text().count("data:image/png;base64,") == 2
    assert sorted(p.name for p in figures.iterdir()) == ["metrics.png", "rise_vs_length.png"]


def test_report_command_needs_an_existing_file(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_eval_command_rejects_an_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(tmp_path / "r.jsonl"),
                                      "--methods", "flashtrace,nope"])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output


def test_eval_command_takes_all_for_every_registered_method(tmp_path, monkeypatch):
    import spantrace.cli.evaluate
    import spantrace.eval.runner
    from spantrace.methods.registry import list_methods

    seen = {}
    monkeypatch.setattr(spantrace.cli.evaluate, "load", lambda model, device=None: "a model")
    monkeypatch.setattr(spantrace.eval.runner, "run_eval", lambda model, config, *_, **__: seen.update(config=config))
    result = CliRunner().invoke(app, ["eval", "--task", "niah_single", "--out", str(tmp_path / "r.jsonl"),
                                      "--methods", "all", "-q"])
    assert result.exit_code == 0, result.output
    assert list(seen["config"].methods) == list_methods()


def test_a_sample_not_scored_by_every_method_is_left_out():
    made = rows() + [{"task": "t", "sample_id": "s9", "method": "flashtrace", "rise": 9.0, "model": "m"}]
    kept, partial = complete_samples(made)
    assert partial == 2 and {row["sample_id"] for row in kept} == {"s0", "s1", "s2"}  # s3: ifr only; s9: ours only
    text = markdown_report(made)
    assert "| flashtrace | 3 | **0.200 ± 0.058** |" in text  # s9's 9.0 is not in the mean
    assert "2 row(s) of samples not yet scored by every method are left out" in text
    assert "row(s) with an error" not in text  # s3's error row went with its sample


def test_each_table_says_where_its_rows_ran():
    assert row_device({"device": "cuda"}) == "cuda"
    assert row_device({"memory_kind": "process_peak_rss"}) == "cpu"  # rows written before the device field
    assert row_device({"memory_kind": "cuda_allocated"}) == "cuda"
    gpu = [{**row, "device": "cuda"} for row in rows()[:4]]
    cpu = [{**row, "device": "cpu"} for row in rows()[4:6]]
    assert devices(gpu) == "cuda"
    assert devices(gpu + cpu) == "cuda (4 rows), cpu (2 rows)"
    assert "Measured on: cuda (4 rows), cpu (2 rows)." in markdown_report(gpu + cpu)
    assert "Measured on: cuda (4 rows), cpu (2 rows)." in html_report(gpu + cpu)


def test_the_overview_puts_one_metric_of_every_task_side_by_side():
    made = many_rows()
    summary = overview(report_tables(made))
    assert summary.metric == "RISE ↓" and summary.tasks == [("a", 8), ("b", 8)]
    table = summarize(made)
    for method, cells in summary.rows:
        for (task, _), (cell, _) in zip(summary.tasks, cells, strict=True):
            mean, error, _ = table[task][method]["rise"]
            assert cell == f"{mean:.3f} ± {error:.3f}"
    assert sum(best for _, cells in summary.rows for _, best in cells) == 2  # one best per task
    text = markdown_report(made)
    assert "## RISE ↓ by task" in text and "| method | a (n=8) | b (n=8) |" in text
    assert "RISE ↓ by task</h2>" in html_report(made)
    assert "by task" not in markdown_report(rows())  # one task: no overview
