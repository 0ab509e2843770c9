"""Models dispatched by accelerate, with some layers offloaded to the CPU and some to disk, trace exactly like the
same model held whole: through ``spantrace.load(folder, device_map=..., offload_folder=...)`` and as a live model
dispatched with ``accelerate.dispatch_model``; for FlashTrace with hops, token-wise IFR and every baseline (or the
baseline refuses both alike). Dense (Llama, Qwen3), sliding-window (Gemma 3), MoE (Qwen3-MoE), MLA (DeepSeek-V3)
and hybrids (Qwen3.5: Gated DeltaNet + gated attention; Nemotron-H: Mamba-2)."""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import dispatch_model
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.errors import OffloadedWeightError, SpanTraceError
from spantrace.offload import execution_device, is_dispatched, materialized

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers"))  # the hybrids' tiny models
import test_deltanet  # noqa: E402
import test_mamba2  # noqa: E402

ARCHS = ("llama", "qwen3", "gemma3_text", "qwen3_moe", "deepseek_v3", "qwen3_5_text", "nemotron_h")
METHODS = spantrace.list_methods()
PROMPT_LENGTH, LENGTH = 8, 14
TOLERANCE = 1e-5  # float32: relative to the largest score


@functools.cache
def whole_model(arch: str) -> torch.nn.Module:
    if arch == "qwen3_5_text":
        return test_deltanet.tiny(arch)
    if arch == "nemotron_h":
        return test_mamba2.tiny(arch)
    return make_tiny_model(arch)


def offload_map(model: torch.nn.Module) -> dict[str, str]:
    """Every top-level part of the decoder stack and the head on the CPU or on disk; the decoder layers
    alternate, the embedding table and the head on disk."""
    placement: dict[str, str] = {}
    for top, child in model.named_children():
        if top == "lm_head":
            placement[top] = "disk"
            continue
        for name, part in child.named_children():
            if isinstance(part, torch.nn.ModuleList):
                placement.update({f"{top}.{name}.{i}": "disk" if i % 2 else "cpu" for i in range(len(part))})
            else:
                placement[f"{top}.{name}"] = "disk" if "emb" in name else "cpu"
    return placement


@functools.cache
def whole_run(arch: str) -> spantrace.Run:
    return spantrace.load(whole_model(arch)).run(input_ids=random_ids(LENGTH), prompt_length=PROMPT_LENGTH)


def traces(run: spantrace.Run, method: str) -> np.ndarray | str:
    """The scores of one trace (FlashTrace with two hops), or the refusal's class and message."""
    try:
        return run.trace((PROMPT_LENGTH, LENGTH), method=method, hops=2 if method == "flashtrace" else 0).scores
    except SpanTraceError as error:
        return f"{type(error).__name__}: {error}"


def assert_same_scores(whole: spantrace.Run, dispatched: spantrace.Run, methods) -> None:
    for method in methods:
        expected, got = traces(whole, method), traces(dispatched, method)
        if isinstance(expected, str):
            assert got == expected, method  # the same refusal, one line
            continue
        assert not isinstance(got, str), f"{method}: {got}"
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error <= TOLERANCE, f"{method}: relative error {error:.2e}"


def offloaded(model: torch.nn.Module) -> bool:
    return any(parameter.device.type == "meta" for parameter in model.parameters())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    made = {}
    for arch in ARCHS:
        made[arch] = tmp_path_factory.mktemp(arch)
        whole_model(arch).save_pretrained(made[arch])
    return made


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_loaded_with_a_device_map_traces_like_the_whole_model(arch: str, folders, tmp_path: Path) -> None:
    placement = offload_map(whole_model(arch))
    model = spantrace.load(str(folders[arch]), device_map=placement, offload_folder=str(tmp_path / "offload"))
    assert is_dispatched(model.hf_model) and offloaded(model.hf_model)
    assert model.self_check is not None and model.self_check.max_relative_error <= 1e-5
    run = model.run(input_ids=random_ids(LENGTH), prompt_length=PROMPT_LENGTH)
    assert offloaded(model.hf_model)  # the trace loaded the offloaded weights only for as long as it read them
    assert_same_scores(whole_run(arch), run, METHODS)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_dispatched_live_traces_like_the_whole_model(arch: str, tmp_path: Path) -> None:
    live = copy.deepcopy(whole_model(arch))
    live = dispatch_model(live, device_map=offload_map(live), offload_dir=str(tmp_path / "offload"))
    assert offloaded(live)
    model = spantrace.load(live)
    assert model.hf_model is live  # taken as it is: not moved, not cast
    run = model.run(input_ids=random_ids(LENGTH), prompt_length=PROMPT_LENGTH)
    assert_same_scores(whole_run(arch), run, ("flashtrace", "ifr", "attention-last", "rollout", "grad-input"))


def test_materialized_is_a_no_op_on_an_ordinary_module() -> None:
    layer = whole_model("llama").model.layers[0]
    before = {name: parameter for name, parameter in layer.named_parameters()}
    with materialized(layer) as same:
        assert same is layer
        assert all(parameter is before[name] for name, parameter in layer.named_parameters())  # no copy
    assert execution_device(layer) == torch.device("cpu")


def test_materialized_loads_an_offloaded_layer_for_the_block_only(tmp_path: Path) -> None:
    live = copy.deepcopy(whole_model("llama"))
    live = dispatch_model(live, device_map=offload_map(live), offload_dir=str(tmp_path / "offload"))
    layer, reference = live.model.layers[1], whole_model("llama").model.layers[1]
    assert layer.self_attn.o_proj.weight.device.type == "meta"
    with materialized(layer):
        assert torch.equal(layer.self_attn.o_proj.weight, reference.self_attn.o_proj.weight)
        layer.self_attn.q_proj(torch.ones(1, reference.self_attn.q_proj.in_features))  # its own forward inside
        assert layer.self_attn.q_proj.weight.device.type == "cpu"  # ... does not drop the weights mid-block
    assert layer.self_attn.o_proj.weight.device.type == "meta"


def test_a_meta_weight_without_an_offload_hook_is_refused_with_what_to_do() -> None:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(whole_model("llama").config)
    with pytest.raises(OffloadedWeightError, match=r"is on the meta device and no accelerate offload hook") as caught:
        spantrace.load(empty)
    assert "\n" not in str(caught.value) and "adapter" not in str(caught.value)
