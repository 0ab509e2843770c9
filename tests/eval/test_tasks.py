"""Tasks: deterministic generators, gold positions on the needle tokens, answer scoring, loader errors."""

from __future__ import annotations

import json

import pytest

from spantrace.errors import InputError
from spantrace.eval.prompts import EvalTokens, Sample, eval_prompt
from spantrace.eval.tasks import make_samples, score_answer
from spantrace.eval.tasks.files import DATA_DIR_VARIABLE, TaskDataError, data_dir, gsm8k_samples, hotpotqa_samples
from spantrace.eval.tasks.ruler import NEEDLE

NIAH = ["niah_single", "niah_mq_q2", "niah_mq_q4", "niah_mv_v2", "niah_mv_v4"]


@pytest.mark.parametrize("task", [*NIAH, "vt", "vt_h2_c3"])
def test_generators_are_deterministic_per_seed(tokenizer, task):
    first = make_samples(task, 2, tokenizer=tokenizer, length=500, seed=7)
    assert first == make_samples(task, 2, tokenizer=tokenizer, length=500, seed=7)
    assert first != make_samples(task, 2, tokenizer=tokenizer, length=500, seed=8)
    assert first[0] != first[1]


def gold_text(tokenizer, prompt) -> str:
    return tokenizer.decode([prompt.ids[p] for p in prompt.gold_positions])


@pytest.mark.parametrize("task", NIAH)
@pytest.mark.parametrize("haystack", ["essay", "noise"])
def test_niah_gold_positions_are_the_queried_needles(tokenizer, task, haystack):
    sample = make_samples(task, 1, tokenizer=tokenizer, length=600, seed=1, haystack=haystack)[0]
    prompt = eval_prompt(tokenizer, sample)
    assert prompt.prompt_length <= 600
    assert set(prompt.gold_positions) <= set(prompt.user_positions)
    gold = gold_text(tokenizer, prompt)
    needles = [NEEDLE.format(key=s[s.index("for ") + 4 : s.index(" is:")], value=s.split(": ")[1][:-1])
               for s in (sample.text[a:b] for a, b in sample.gold_spans)]
    assert len(needles) == len(sample.answers)
    for needle, answer in zip(needles, sorted(sample.answers, key=gold.index), strict=False):
        assert needle in gold
        assert answer in gold
    # every gold token overlaps a needle: no haystack token is gold
    assert gold.replace(" ", "") == "".join(sorted(needles, key=gold.index)).replace(" ", "")
    assert score_answer(sample, " ".join(sample.answers)) == 1.0


@pytest.mark.parametrize("haystack", ["noise", "essay"])
def test_vt_gold_positions_are_the_first_chain(tokenizer, haystack):
    sample = make_samples("vt_h3_c2", 1, tokenizer=tokenizer, length=700, seed=2, haystack=haystack)[0]
    names = sample.answers
    assert len(names) == 4 and f"{len(names)} variables are assigned" in sample.answer_prefix
    prompt = eval_prompt(tokenizer, sample)
    gold = gold_text(tokenizer, prompt)
    value = sample.answer_prefix.split("value ")[1].split(",")[0]
    assert f"VAR {names[0]} = {value}" in gold
    for previous, name in zip(names, names[1:], strict=False):
        assert f"VAR {name} = VAR {previous}" in gold
    assert gold.count("VAR") == 2 * len(names) - 1  # only the first chain's statements
    assert score_answer(sample, " ".join(names[:2])) == 0.5


def test_user_positions_exclude_the_chat_template(tokenizer):
    sample = Sample("t", "t-0", "Where is the cat?", ("mat",), answer_prefix=" The cat is", gold_spans=((13, 16),))
    prompt = eval_prompt(tokenizer, sample)
    assert tokenizer.decode([prompt.ids[p] for p in prompt.user_positions]) == "Where is the cat?"
    assert tokenizer.decode([prompt.ids[p] for p in prompt.gold_positions]).strip() == "cat"
    assert prompt.text.endswith("assistant\n The cat is")
    tokens = [tokenizer.decode([i]) for i in prompt.ids]
    kept = EvalTokens(scope="user", stop_tokens="drop").positions(prompt, tokens)
    assert tokenizer.decode([prompt.ids[p] for p in kept]) == "Where is the cat"
    assert len(EvalTokens(scope="prompt").positions(prompt, tokens)) == prompt.prompt_length
    with pytest.raises(InputError):
        EvalTokens(scope="all")


def test_too_short_a_length_is_a_clear_error(tokenizer):
    with pytest.raises(InputError, match="too short"):
        make_samples("niah_mq_q4", 1, tokenizer=tokenizer, length=60, haystack="noise")


def test_scoring():
    number = Sample("gsm8k", "g", "q", ("1450000",), scoring="number")
    assert score_answer(number, "so 1,450,000 in total.\nThe answer is 1,450,000.") == 1.0
    assert score_answer(number, "The answer is 14.") == 0.0
    assert score_answer(Sample("qa", "q", "q", ("Paris",), scoring="part"), "it is paris\x00") == 1.0
    assert score_answer(Sample("n", "n", "q", ("12", "34")), "12 and 56") == 0.5


def test_file_tasks_load_the_bundled_data():
    gsm = make_samples("gsm8k", 2)
    assert gsm[0].answers == ("18",) and gsm[0].scoring == "number"
    hotpot = make_samples("hotpotqa", 1)[0]
    assert hotpot.answers == ("yes",)
    golds = [hotpot.text[a:b] for a, b in hotpot.gold_spans]
    assert golds[0].startswith("Scott Derrickson (born July 16, 1966)") and len(golds) == 2
    more = make_samples("morehopqa", 3)
    assert len(more) == 3 and more[0].gold_spans == () and more[0].answers == ("116",)


def test_loaders_name_the_file_and_the_missing_field(tmp_path):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(TaskDataError, match=r"gsm\.jsonl: record 0 has no field 'answer'"):
        list(gsm8k_samples(bad))
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(TaskDataError, match="####"):
        list(gsm8k_samples(bad))
    hotpot = tmp_path / "hotpot.json"
    hotpot.write_text(json.dumps([{"question": "q", "answer": "a", "context": []}]))
    with pytest.raises(TaskDataError, match=r"hotpot\.json: record 0 has no field 'supporting_facts'"):
        list(hotpotqa_samples(hotpot))
    hotpot.write_text("{not json")
    with pytest.raises(TaskDataError, match="not valid JSON"):
        list(hotpotqa_samples(hotpot))


def test_data_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(TaskDataError, match=DATA_DIR_VARIABLE):
        make_samples("gsm8k", 1)
    (tmp_path / "gsm8k_test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(TaskDataError, match="sha256"):
        make_samples("gsm8k", 1)
