"""Source-level measures: the metric functions by hand, sentence ablation, the docs_needle task, and the runner."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from runner_job import tiny_model

from spantrace import inputs
from spantrace.errors import InputError
from spantrace.eval import metrics, sources
from spantrace.eval.prompts import eval_prompt, prepare_sample, token_counter
from spantrace.eval.report import markdown_report
from spantrace.eval.runner import EvalConfig, run_eval
from spantrace.eval.tasks import make_samples, source_kind
from spantrace.eval.tasks.docs import docs_needle_documents
from spantrace.readout import answer_log_probs

# --- metrics on hand-made inputs ---------------------------------------------------------------------


def test_source_recovery_counts_gold_among_the_top_k():
    scores = [0.1, 0.9, 0.5, 0.7, 0.0]
    gold = [False, True, False, False, True]
    assert metrics.source_recovery(scores, gold, 1) == 0.5  # top 1: source 1 (gold)
    assert metrics.source_recovery(scores, gold, 2) == 0.5  # sources 1, 3
    assert metrics.source_recovery(scores, gold, 4) == 0.5  # 1, 3, 2, 0: source 4 is last
    assert metrics.source_recovery(scores, gold, 5) == 1.0


def test_source_recovery_degenerate_cases():
    # ties: broken by position, earlier first (all-equal scores take the first k sources)
    assert metrics.source_recovery([1.0, 1.0, 1.0], [False, False, True], 2) == 0.0
    assert metrics.source_recovery([1.0, 1.0, 1.0], [True, False, False], 1) == 1.0
    # k larger than the number of sources takes them all
    assert metrics.source_recovery([0.3, 0.1], [False, True], 10) == 1.0
    # a source without tokens (−∞) ranks last
    assert metrics.source_recovery([-np.inf, 0.0], [True, False], 1) == 0.0
    with pytest.raises(ValueError, match="at least one gold"):
        metrics.source_recovery([0.1, 0.2], [False, False], 1)
    with pytest.raises(ValueError, match="k must be"):
        metrics.source_recovery([0.1, 0.2], [True, False], 0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.source_recovery([np.nan, 0.2], [True, False], 1)
    with pytest.raises(ValueError, match="shape"):
        metrics.source_recovery([0.1, 0.2], [True], 1)


def test_top_source_hit_with_ties_and_bad_targets():
    assert metrics.top_source_hit([0.2, 0.9, 0.1], 1)
    assert not metrics.top_source_hit([0.2, 0.9, 0.1], 0)
    assert metrics.top_source_hit([0.5, 0.5], 0) and not metrics.top_source_hit([0.5, 0.5], 1)
    with pytest.raises(ValueError, match="not one of"):
        metrics.top_source_hit([0.5, 0.5], 2)


def test_ablation_drops_and_auc_by_hand():
    values = [-10.0, -12.0, -13.0, -13.0, -16.0]  # k = 0, 1, 2, 3, 5
    np.testing.assert_allclose(metrics.ablation_drops(values), [0.0, 2.0, 3.0, 3.0, 6.0])
    # trapezoids: (0+2)/2·1 + (2+3)/2·1 + (3+3)/2·1 + (3+6)/2·2 = 1 + 2.5 + 3 + 9 = 15.5, over k_max = 5
    assert metrics.ablation_auc([0, 1, 2, 3, 5], values) == pytest.approx(3.1)
    assert metrics.ablation_auc([0, 1], [-1.0, -1.0]) == 0.0  # nothing moved
    assert metrics.ablation_auc([0, 2], [-3.0, -1.0]) == pytest.approx(-1.0)  # the answer got likelier
    with pytest.raises(ValueError, match="starts at 0"):
        metrics.ablation_auc([1, 2], [-1.0, -2.0])
    with pytest.raises(ValueError, match="starts at 0"):
        metrics.ablation_auc([0, 2, 2], [-1.0, -2.0, -3.0])
    with pytest.raises(ValueError, match="at least one k"):
        metrics.ablation_auc([0], [-1.0])
    with pytest.raises(ValueError, match="points"):
        metrics.ablation_auc([0, 1, 2], [-1.0, -2.0])


def test_random_scores_are_a_seeded_permutation():
    first = sources.random_scores(7, "s-1", 42)
    assert sorted(first) == list(range(1, 8))
    np.testing.assert_array_equal(first, sources.random_scores(7, "s-1", 42))
    assert not np.array_equal(first, sources.random_scores(7, "s-2", 42))


# --- HotpotQA sentences and the ablation ----------------------------------------------------------------


@pytest.fixture(scope="module")
def hotpot():
    return make_samples("hotpotqa", 2)


def test_hotpotqa_sentences_cover_the_gold_spans(hotpot):
    for sample in hotpot:
        spans = sample.metadata["sentences"]
        assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:], strict=False))  # sorted, disjoint
        gold = [spans[i] for i in sample.metadata["gold_sentences"]]
        assert gold == [span for span in sample.gold_spans if sample.text[span[0] : span[1]].strip()]


def test_ablation_drops_exactly_the_chosen_sentences(hotpot, tokenizer):
    sample = hotpot[0]
    spans = sample.metadata["sentences"]
    drop = [0, 3, len(spans) - 1]
    ablated = sources.ablated_sample(sample, drop)
    pieces, cursor = [], 0
    for index, (start, end) in enumerate(spans):
        pieces.append(sample.text[cursor:start] + ("" if index in drop else sample.text[start:end]))
        cursor = end
    assert ablated.text == "".join(pieces) + sample.text[cursor:]
    assert len(ablated.text) == len(sample.text) - sum(spans[i][1] - spans[i][0] for i in drop)
    for index, (start, end) in enumerate(spans):
        assert (sample.text[start:end] in ablated.text) == (index not in drop) or sample.text.count(
            sample.text[start:end]
        ) > 1
    assert sample.text[-60:] == ablated.text[-60:]  # the question stays
    prompt = prepare_sample(tokenizer, ablated)
    assert ablated.text in prompt.context.text and sources.ablated_sample(sample, []).text == sample.text


def test_sentence_token_ranges_hold_each_sentence(hotpot, tokenizer):
    sample = hotpot[0]
    prompt = eval_prompt(tokenizer, sample)
    ranges = sources.sentence_token_ranges(prompt, sample.metadata["sentences"])
    for (start, end), tokens in zip(sample.metadata["sentences"], ranges, strict=True):
        assert tokens is not None
        decoded = tokenizer.decode(prompt.ids[tokens[0] : tokens[1]])
        assert " ".join(decoded.split()) == " ".join(sample.text[start:end].split())


def test_answer_log_probs_batched_equals_one_by_one(tokenizer):
    model = tiny_model(tokenizer)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7], [12, 13, 14, 15, 16], [17]]
    answer = [20, 21, 22]
    batched = answer_log_probs(model.hf_model, prompts, answer)
    single = [answer_log_probs(model.hf_model, [p], answer, batch_size=1)[0] for p in prompts]
    np.testing.assert_allclose(batched, single, rtol=1e-5)
    with torch.inference_mode():  # by hand: log-softmax of the full logits
        ids = torch.tensor([prompts[0] + answer])
        logits = model.hf_model(input_ids=ids).logits[0].log_softmax(-1)
    by_hand = sum(float(logits[len(prompts[0]) - 1 + j, t]) for j, t in enumerate(answer))
    assert batched[0] == pytest.approx(by_hand, rel=1e-5)


# --- docs_needle -----------------------------------------------------------------------------------------


def test_docs_needle_one_needle_deterministic_and_fitted(tokenizer):
    samples = make_samples("docs_needle", 3, tokenizer=tokenizer, length=400, seed=7)
    again = make_samples("docs_needle", 3, tokenizer=tokenizer, length=400, seed=7)
    other = make_samples("docs_needle", 3, tokenizer=tokenizer, length=400, seed=8)
    assert samples == again and samples != other
    count = token_counter(tokenizer)
    for sample in samples:
        documents = sample.metadata["documents"]
        needle = sample.metadata["needle_document"]
        assert len(documents) == 10 and 0 <= needle < 10
        holders = [i for i, text in enumerate(documents) if "special magic number" in text]
        assert holders == [needle] and documents[needle].count("special magic number") == 1
        ((start, end),) = sample.gold_spans
        assert re.fullmatch(r"The special magic number for [a-z]+-[a-z]+ is: \d{7}\.", sample.text[start:end])
        assert sample.answers[0] in sample.text[start:end]
        assert 300 < count(sample.text) <= 400  # the largest documents that fit, not far below the length
        prompt = eval_prompt(tokenizer, sample)  # the library's documents= layout, whose text is the sample's
        assert prompt.ids == inputs.prepare(tokenizer, prompt=sample.text).ids
        ranges = sources.document_token_ranges(prompt)
        assert [s.index for s in prompt.layout.of_kind("document")] == list(range(10))
        for text, (first, last) in zip(documents, ranges, strict=True):  # each document's own tokens
            assert tokenizer.decode(prompt.ids[first:last]).strip() == text
        gold = set(prompt.gold_positions.tolist())
        assert gold and gold <= set(range(*ranges[needle])) and gold <= set(prompt.user_positions.tolist())
        user_text = tokenizer.decode([prompt.ids[p] for p in prompt.user_positions])
        assert " ".join(user_text.split()) == " ".join(sample.text.split())  # the sample's text, headers included
        assert not any(prompt.layout.template[p] for p in prompt.gold_positions)
    assert docs_needle_documents("docs_needle_d4") == 4 and source_kind("docs_needle_d4") == "document"
    assert len(make_samples("docs_needle_d4", 1, tokenizer=tokenizer, length=200)[0].metadata["documents"]) == 4
    with pytest.raises(InputError, match="between 2"):
        docs_needle_documents("docs_needle_d1")
    with pytest.raises(InputError, match="too short"):
        make_samples("docs_needle", 1, tokenizer=tokenizer, length=30)


def test_docs_needle_matched_equal_words_one_needle_and_paired(tokenizer):
    samples = make_samples("docs_needle_matched", 4, tokenizer=tokenizer, length=400, seed=7)
    again = make_samples("docs_needle_matched", 4, tokenizer=tokenizer, length=400, seed=7)
    assert samples == again and samples != make_samples("docs_needle_matched", 4, tokenizer=tokenizer, length=400)
    assert samples != make_samples("docs_needle_matched", 4, tokenizer=tokenizer, length=380, seed=7)
    plain = make_samples("docs_needle", 4, tokenizer=tokenizer, length=400, seed=7)
    count = token_counter(tokenizer)
    for sample, twin in zip(samples, plain, strict=True):
        documents, needle = sample.metadata["documents"], sample.metadata["needle_document"]
        assert sample.task == "docs_needle_matched" and sample.sample_id.startswith("docs_needle_matched-7-")
        assert len({len(text.split()) for text in documents}) == 1  # every document: the same number of words
        holders = [i for i, text in enumerate(documents) if "special magic number" in text]
        assert holders == [needle] and documents[needle].count("special magic number") == 1
        ((start, end),) = sample.gold_spans
        assert re.fullmatch(r"The special magic number for [a-z]+-[a-z]+ is: \d{7}\.", sample.text[start:end])
        # the needle sits at a sentence boundary: the document starts with it, or it follows a sentence end
        inside = documents[needle].index(sample.text[start:end])
        assert inside == 0 or documents[needle][:inside].rstrip()[-1] in ".!?\"')]"
        # paired with the plain task: same draws and texts, the needle document cut by the needle's words
        assert sample.answers == twin.answers and needle == twin.metadata["needle_document"]
        plain_documents = twin.metadata["documents"]
        assert all(a == b for i, (a, b) in enumerate(zip(documents, plain_documents, strict=True)) if i != needle)
        assert len(plain_documents[needle].split()) == len(documents[needle].split()) + 8
        assert count(sample.text) < count(twin.text) <= 400
        assert eval_prompt(tokenizer, sample).ids == inputs.prepare(tokenizer, prompt=sample.text).ids
    four = make_samples("docs_needle_matched_d4", 2, tokenizer=tokenizer, length=200)
    assert [len(s.metadata["documents"]) for s in four] == [4, 4]
    assert source_kind("docs_needle_matched_d4") == "document"
    assert all(len({len(t.split()) for t in s.metadata["documents"]}) == 1 for s in four)
    with pytest.raises(InputError, match="between 2"):
        docs_needle_documents("docs_needle_matched_d51")
    with pytest.raises(InputError, match="too short"):
        make_samples("docs_needle_matched", 1, tokenizer=tokenizer, length=120)


# --- the runner ------------------------------------------------------------------------------------------


def test_config_rejects_bad_measures_and_keeps_old_fingerprints():
    with pytest.raises(InputError, match="measures must be"):
        EvalConfig(task="hotpotqa", measures="sentences")
    with pytest.raises(InputError, match="no source-level measures"):
        EvalConfig(task="gsm8k", measures="source")
    with pytest.raises(InputError, match="baseline row"):
        EvalConfig(task="hotpotqa", methods=("flashtrace", "random"))
    # a task without sources keeps its fingerprint, so files written before resume
    assert EvalConfig(task="gsm8k").fingerprint() == EvalConfig(task="gsm8k", measures="token").fingerprint()
    assert EvalConfig(task="hotpotqa").fingerprint() != EvalConfig(task="hotpotqa", measures="token").fingerprint()
    assert EvalConfig(task="hotpotqa").row_methods[-1] == "random"
    assert "random" not in EvalConfig(task="hotpotqa", measures="token").row_methods


HOTPOT_RECORD = {
    "_id": "tiny",
    "question": "Which city is the capital of Freedonia?",
    "answer": "Lumen",
    "supporting_facts": [["Freedonia", 1]],
    "context": [
        ["Freedonia", ["Freedonia is a small country.", " Its capital is Lumen.", " It exports cheese."]],
        ["Sylvania", ["Sylvania borders Freedonia.", " Its capital is Ostra."]],
    ],
}


def test_runner_writes_source_rows_with_a_random_baseline(tmp_path, tokenizer):
    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps([HOTPOT_RECORD]))
    model = tiny_model(tokenizer)
    hotpot = EvalConfig(
        task="hotpotqa", methods=("flashtrace", "attention-last"), n=1, steps=3, max_new_tokens=4, data_path=str(data)
    )
    rows = run_eval(model, hotpot, tmp_path / "hotpot.jsonl").rows
    assert [row["method"] for row in rows] == ["flashtrace", "attention-last", "random"]
    for row in rows:
        assert row["sentences"] == 5 and row["gold_sentences"] == 1
        assert row["sentence_recovery_at_gold"] in (0.0, 1.0) and row["sentence_recovery_at_5"] == 1.0
        assert len(row["ablation_curve"]) == len(sources.ABLATION_KS)
        assert row["ablation_curve"][-1] == rows[0]["ablation_curve"][-1]  # k = 5: every sentence gone
        assert row["ablation_drop_1"] == pytest.approx(row["ablation_curve"][0] - row["ablation_curve"][1])
    assert "rise" in rows[0] and "rise" not in rows[2] and "trace_s" not in rows[2]
    assert len({row["ablation_curve"][0] for row in rows}) == 1  # k = 0 is the unablated prompt for all

    needle = EvalConfig(
        task="docs_needle_d3", methods=("flashtrace",), n=2, length=200, max_new_tokens=3, measures="source"
    )
    out = tmp_path / "needle.jsonl"
    rows = run_eval(model, needle, out).rows
    assert [row["method"] for row in rows] == ["flashtrace", "random"] * 2
    for row in rows:
        assert row["documents"] == 3 and row["top_document_correct"] in (0.0, 1.0)
        assert row["top_document_correct"] == float(row["top_document"] == row["needle_document"])
        assert "rise" not in row
    assert len(run_eval(model, needle, out).rows) == 4  # resumed: nothing left to do
    report = markdown_report(rows)
    assert "Top document ↑" in report and "| random |" in report and "RISE" not in report
    assert "Measured on: cpu." in report  # the baseline rows say where their forwards ran


def test_prefix_scorer_equals_whole_forwards(tokenizer):
    model = tiny_model(tokenizer)
    reference = list(range(5, 25))
    answer = [30, 31, 32]
    scorer = sources.PrefixScorer(model, reference, answer)
    variants = [
        reference,
        reference[:8] + reference[12:],
        reference[:1] + reference[3:],
        [4] + reference[1:],
        reference[:-1],
        reference[:10],
    ]
    whole = answer_log_probs(model.hf_model, variants, answer)
    np.testing.assert_allclose([scorer(v) for v in variants], whole, rtol=1e-5, atol=1e-5)
    assert scorer.reference_value == pytest.approx(whole[0], rel=1e-5)


def test_eval_command_takes_measures_and_rejects_bad_ones(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spantrace.cli.evaluate
    import spantrace.eval.runner
    from spantrace.cli import app

    seen = {}
    monkeypatch.setattr(spantrace.cli.evaluate, "load", lambda model, device=None: "a model")
    monkeypatch.setattr(spantrace.eval.runner, "run_eval", lambda model, config, *_, **__: seen.update(config=config))
    out = str(tmp_path / "r.jsonl")
    result = CliRunner().invoke(app, ["eval", "--task", "docs_needle", "--out", out, "--measures", "source", "-q"])
    assert result.exit_code == 0, result.output
    assert seen["config"].measures == "source" and seen["config"].row_methods == ("flashtrace", "ifr", "random")
    result = CliRunner().invoke(app, ["eval", "--task", "gsm8k", "--out", out, "--measures", "source", "-q"])
    assert result.exit_code == 2 and "no source-level measures" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_report_command_on_source_rows_only(tmp_path):
    from typer.testing import CliRunner

    from spantrace.cli import app

    rows = [
        {
            "task": "docs_needle",
            "sample_id": f"s{i}",
            "method": method,
            "model": "m",
            "config": "c",
            "device": "cpu",
            "top_document_correct": float(method == "flashtrace" or i == 0),
        }
        for i in range(3)
        for method in ("flashtrace", "random")
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures = tmp_path / "figures"
    result = CliRunner().invoke(app, ["report", str(data), "--plots", str(figures)])
    assert result.exit_code == 0, result.output
    assert "| flashtrace | 3 | **1.000 ± 0.000** |" in result.output
    assert "| random | 3 | 0.333 ± 0.333 |" in result.output
    assert [p.name for p in figures.iterdir()] == ["metrics.png"]  # no RISE, so no RISE-vs-length figure
