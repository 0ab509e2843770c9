"""The command line's --device-map, --max-memory and --offload-folder, and the one-line refusals of what cannot be
dispatched or read: a bad device map or memory cap (checked before the model loads), a weight left quantised in its
module, options that do not apply to a model object, a dispatched model asked to move."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import dispatch_model
from tiny_models import make_tiny_model
from typer.testing import CliRunner

import spantrace
from spantrace.cli import app
from spantrace.errors import ModelLoadError, QuantizedWeightError
from spantrace.loading.placement import dispatch_options, parse_device_map, parse_max_memory

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
OUTPUT = "He has 3 + 4 = 7 apples."


@pytest.fixture(scope="module")
def folder(tokenizer, tmp_path_factory) -> Path:
    saved = tmp_path_factory.mktemp("llama")
    make_tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    return saved


def test_trace_with_a_device_map_and_an_offload_folder_gives_the_whole_models_scores(folder: Path, tmp_path) -> None:
    placement = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                 "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    out = tmp_path / "trace.json"
    args = ["trace", "--model", str(folder), "--prompt", PROMPT, "--output", OUTPUT, "--hops", "1", "--quiet",
            "--device-map", json.dumps(placement), "--offload-folder", str(tmp_path / "offload"),
            "--max-memory", "cpu=8GiB", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    dispatched = spantrace.TraceResult.load(out)
    whole = spantrace.load(str(folder)).run(PROMPT, output=OUTPUT).trace(dispatched.span, hops=1)
    assert np.abs(dispatched.scores - whole.scores).max() <= 1e-5 * np.abs(whole.scores).max()


@pytest.mark.parametrize("command", ["trace", "eval", "serve"])
@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--device-map", "everywhere"], "'everywhere' is not a device map"),
        (["--device-map", "{not json"], "--device-map is not valid JSON"),
        (["--device-map", '{"model.layers.0": "moon"}'], "'moon' is not a place"),
        (["--device-map", "auto", "--max-memory", "0=lots"], "max_memory for '0' is 'lots'"),
        (["--device-map", "auto", "--max-memory", "20GiB"], "is not DEVICE=AMOUNT"),
        (["--offload-folder", "off"], "need a device_map"),
        (["--device-map", '{"model.layers.0": "disk"}'], "give offload_folder="),
        (["--device-map", "auto", "--device", "cpu"], "not both"),
    ],
)
def test_bad_placement_options_fail_in_one_line_before_the_model_loads(command, options, says, monkeypatch) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load")

    for module in ("trace", "evaluate", "serve"):
        monkeypatch.setattr(f"spantrace.cli.{module}.load", no_load)
    first = {"trace": ["--prompt", PROMPT], "eval": ["--task", "gsm8k", "--out", "unused.jsonl"], "serve": []}
    result = CliRunner().invoke(app, [command, *first[command], *options])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_the_api_reads_placements_as_the_command_line_does() -> None:
    assert parse_device_map("auto") == "auto" and parse_device_map("0") == 0
    assert parse_device_map('{"model.layers.1": "disk", "lm_head": 0}') == {"model.layers.1": "disk", "lm_head": 0}
    assert parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory('{"1": "10GB"}') == {1: "10GB"}
    assert dispatch_options(None, None, None) == {}
    assert dispatch_options("auto", {"cpu": "1GiB"}, "off") == {
        "device_map": "auto", "max_memory": {"cpu": "1GiB"}, "offload_folder": "off"
    }
    with pytest.raises(ModelLoadError, match="not a device map"):
        spantrace.load("some/model", device_map="nowhere")


def test_placement_options_apply_to_folders_and_hub_ids_not_to_model_objects() -> None:
    with pytest.raises(ModelLoadError, match="apply to a model folder or hub id"):
        spantrace.load(make_tiny_model("llama"), device_map="auto")


def test_a_dispatched_model_is_not_moved_or_cast(tmp_path: Path) -> None:
    live = copy.deepcopy(make_tiny_model("llama"))
    live = dispatch_model(live, device_map={"model": "cpu", "lm_head": "disk"}, offload_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match="dispatched by accelerate"):
        spantrace.load(live, dtype="bfloat16")
    with pytest.raises(ModelLoadError, match="dispatched by accelerate"):
        spantrace.load(live, device="cpu")


def test_a_weight_kept_quantised_is_refused_at_load_with_the_reason() -> None:
    model = copy.deepcopy(make_tiny_model("llama"))
    projection = model.model.layers[1].self_attn.o_proj
    packed = torch.zeros(projection.weight.shape, dtype=torch.uint8)
    projection.weight = torch.nn.Parameter(packed, requires_grad=False)
    with pytest.raises(QuantizedWeightError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight is stored quantised"):
        spantrace.load(model)

    class Linear4bit(torch.nn.Linear):  # bitsandbytes' class name: its weight is packed 4-bit numbers
        pass

    model = copy.deepcopy(make_tiny_model("llama"))
    model.model.layers[0].mlp.down_proj = Linear4bit(8, 8)
    with pytest.raises(QuantizedWeightError, match="is a Linear4bit, which keeps its weight quantised"):
        spantrace.load(model)
