"""The memory plan (spantrace.memory) against what a capture and its Run really keep, and its refusal.

What is "really kept" is counted here by its own walk: the distinct storages behind the capture's tensors and the
Run's key/value cache after a trace (every entry, its parts two levels down, as the Run holds them), each storage
once. The plan must equal it exactly where the sequence is a whole number of the delta rule's chunks (64 tokens),
and in between lie above it by at most one chunk of each Gated DeltaNet layer's decomposition per token.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import ARCHITECTURES, make_tiny_model, random_ids

import spantrace
from spantrace import memory
from spantrace.errors import MemoryPlanError

sys.path.insert(0, str(Path(__file__).parent / "layers"))  # the hybrids' tiny models live with their layer tests

from test_deltanet import tiny as tiny_qwen_hybrid  # noqa: E402
from test_mamba2 import tiny as tiny_mamba_hybrid  # noqa: E402

QWEN_HYBRIDS = ("qwen3_5_text", "qwen3_next")
MAMBA_HYBRIDS = ("nemotron_h", "granitemoehybrid", "bamba", "falcon_h1")


@functools.cache
def loaded(arch: str) -> spantrace.Model:
    if arch in QWEN_HYBRIDS:
        model = tiny_qwen_hybrid(arch)
    elif arch in MAMBA_HYBRIDS:
        model = tiny_mamba_hybrid(arch)
    else:
        model = make_tiny_model(arch)
    return spantrace.Model(model, None, arch)


def _storages(value: object, seen: set[int], depth: int) -> int:
    """Bytes of the storages behind the tensors in ``value`` (a tensor, a list or tuple, or an object's
    attributes ``depth`` levels down), each storage counted once across calls sharing ``seen``."""
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(value, (list, tuple)):
        return sum(_storages(item, seen, depth) for item in value)
    if depth < 0 or isinstance(value, torch.nn.Module) or not hasattr(value, "__dict__"):
        return 0
    return sum(_storages(item, seen, depth - 1) for item in vars(value).values())


def really_kept(run: spantrace.Run) -> int:
    """What the capture holds plus what the Run's cache holds after its traces, in bytes."""
    seen: set[int] = set()
    captured = _storages(run.capture, seen, 1)
    return captured + sum(_storages(entry, seen, 2) for entry in run.key_value_cache.values())


def traced(arch: str, tokens: int, **options) -> tuple[spantrace.Run, memory.MemoryPlan]:
    model = loaded(arch)
    # allow_long: ministral3's tiny config is trained on 24 positions; the plan, not the context, is tested here
    run = model.run(input_ids=random_ids(tokens), prompt_length=tokens - 12, progress=False, allow_long=True, **options)
    run.trace((tokens - 4, tokens), hops=1)
    return run, memory.plan_capture(model.adapter, tokens, **options)


@pytest.mark.parametrize("arch", ARCHITECTURES + QWEN_HYBRIDS + MAMBA_HYBRIDS)
def test_the_plan_is_what_the_capture_and_the_run_keep(arch: str) -> None:
    run, plan = traced(arch, 64)
    assert plan.kept == really_kept(run)
    assert set(plan.devices) == {"cpu"}


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "deepseek_v3", "qwen3_5_text", "nemotron_h"])
def test_a_smaller_store_dtype_and_offload_are_planned_too(arch: str) -> None:
    run, plan = traced(arch, 64, store_dtype=torch.float16, offload=True)
    assert plan.kept == really_kept(run)
    assert plan.store_dtype == "float16"


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3", "qwen3_5_text", "nemotron_h", "falcon_h1"])
def test_between_whole_chunks_the_plan_is_an_upper_bound_within_one_chunk(arch: str) -> None:
    run, plan = traced(arch, 40)
    kept = really_kept(run)
    shapes = memory.layer_shapes(loaded(arch).adapter)
    margin = sum(shape.decomposition_per_token * shape.decomposition_chunk for shape in shapes)
    assert kept <= plan.kept <= kept + margin
    if arch != "qwen3_5_text":  # only the delta rule pads to whole chunks
        assert plan.kept == kept


def test_the_parts_of_the_formula() -> None:
    """A dense layer by hand: x_in and x_mid, the log-sum-exp, keys and values, the token ids."""
    shape = memory.LayerShape(device="cpu", hidden=10, heads=4, kv_heads=2, key_dim=3, value_dim=5, logsumexp=True)
    plan = memory.plan_memory([shape, shape], 7, store_bytes=2, model_bytes=4)
    per_layer_capture = 2 * 7 * 10 * 2 + 4 * 4 * 7
    assert plan.devices["cpu"].capture == 2 * per_layer_capture + 8 * 7
    assert plan.devices["cpu"].cache == 2 * 7 * 2 * (3 + 5) * 4


def test_offload_moves_the_capture_and_leaves_the_cache_with_the_layer() -> None:
    shape = memory.LayerShape(device="cuda:0", hidden=8, heads=2, kv_heads=2, key_dim=4, value_dim=4)
    kept = memory.plan_memory([shape], 5, store_bytes=4, model_bytes=4, offload=True)
    assert kept.devices["cuda:0"].capture == 0
    assert kept.devices["cpu"].capture == 2 * 5 * 8 * 4 + 8 * 5
    assert kept.devices["cuda:0"].cache == 5 * 2 * 8 * 4


def gpu_plans(store: torch.dtype | None, cpu: bool) -> memory.MemoryPlan:
    """A plan of 32 float32 layers on a (pretend) GPU, 1000 tokens: what ``fit`` chooses between."""
    shape = memory.LayerShape(device="cuda:0", hidden=4096, heads=32, kv_heads=8, key_dim=128, value_dim=128)
    store_bytes = 2 if store == torch.bfloat16 else 4
    return memory.plan_memory(
        [shape] * 32, 1000, store_bytes=store_bytes, model_bytes=4, offload=cpu,
        store_dtype="bfloat16" if store == torch.bfloat16 else "float32",
    )


def test_a_short_gpu_falls_back_to_a_capture_on_the_cpu() -> None:
    needed = gpu_plans(None, False).devices["cuda:0"]
    free = {"cuda:0": int(needed.total * 0.7), "cpu": 1 << 40}  # the cache and working fit, the capture does not
    plan = memory.fit(gpu_plans, store_dtype=None, offload=False, free=free)
    assert plan.offload and plan.fallback is not None and "offload=True" in plan.fallback
    assert plan.free == free


def test_the_refusal_says_what_is_needed_what_is_free_and_what_fits() -> None:
    halved = gpu_plans(torch.bfloat16, False).devices["cuda:0"]
    free = {"cuda:0": int(halved.total * 1.2), "cpu": 1 << 20}  # the CPU has no room; bfloat16 on the GPU fits
    with pytest.raises(MemoryPlanError) as raised:
        memory.fit(gpu_plans, store_dtype=None, offload=False, free=free)
    message = str(raised.value)
    assert "\n" not in message
    assert "1000 tokens" in message and "cuda:0" in message
    assert f"only {free['cuda:0'] / 2**20:.2f} MiB is free there" in message
    assert "pass store_dtype=torch.bfloat16 to make it fit" in message


def test_the_refusal_without_a_way_out_says_to_trace_fewer_tokens() -> None:
    with pytest.raises(MemoryPlanError, match="trace fewer tokens, or free memory"):
        memory.fit(gpu_plans, store_dtype=torch.bfloat16, offload=True, free={"cuda:0": 1 << 20, "cpu": 1 << 20})


def test_run_refuses_before_the_capture_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    model = loaded("llama")

    def no_capture(*args, **kwargs):
        raise AssertionError("the capture started although the plan did not fit")

    monkeypatch.setattr(spantrace.api, "capture_residuals", no_capture)
    needed = memory.plan_capture(model.adapter, 30).devices["cpu"].total
    halved = memory.plan_capture(model.adapter, 30, store_dtype=torch.bfloat16).devices["cpu"].total
    free = int(halved / (1 - memory.HEADROOM)) + 16  # bfloat16 just fits with the headroom, float32 does not
    assert halved < free * (1 - memory.HEADROOM) < needed
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    with pytest.raises(MemoryPlanError, match=r"a trace of 30 tokens needs .* KiB on cpu .* free there; pass store_"):
        model.run(input_ids=random_ids(30), prompt_length=20, progress=False)


def test_the_plan_goes_into_the_result_info() -> None:
    run, plan = traced("llama", 24)
    info = run.trace((20, 24)).info["memory"]
    assert info["tokens"] == 24 and info["fallback"] is None
    assert info["devices"]["cpu"]["capture"] == plan.devices["cpu"].capture
    assert info["devices"]["cpu"]["free"] > 0
    assert spantrace.TraceResult.from_json(run.trace((20, 24)).to_json()).info["memory"] == info


def test_hybrid_decompositions_are_kept_only_while_they_fit_the_cache_limit() -> None:
    """As layers.dispatch.mixing_layer: a decomposition that would pass HYBRID_CACHE_BYTES is rebuilt each trace,
    so it counts in the working peak instead of the cache."""
    from spantrace.layers.dispatch import HYBRID_CACHE_BYTES

    half = HYBRID_CACHE_BYTES // 2 + 1
    shape = memory.LayerShape(device="cpu", hidden=4, decomposition_fixed=half)
    plan = memory.plan_memory([shape, shape], 3, store_bytes=4, model_bytes=4)
    assert plan.devices["cpu"].cache == half  # the first one only
    assert plan.devices["cpu"].working >= half


def test_an_offloaded_layer_is_planned_where_it_runs() -> None:
    """A layer whose weights accelerate keeps offloaded sits on the meta device with a hook that names where it
    runs: it is planned there, and a hybrid kind is measured on a layer of that kind whose weights are loaded."""
    import copy
    from types import SimpleNamespace

    model = copy.deepcopy(loaded("qwen3_5_text").hf_model)
    adapter = spantrace.Model(model, None, "offloaded", check=False).adapter
    whole = memory.layer_shapes(loaded("qwen3_5_text").adapter)
    offloaded = 0  # a Gated DeltaNet layer, the first of its kind
    assert whole[offloaded].decomposition_per_token > 0
    adapter.layer(offloaded).to("meta")
    adapter.layer(offloaded)._hf_hook = SimpleNamespace(execution_device="cuda:1")
    shapes = memory.layer_shapes(adapter)
    assert shapes[offloaded].device == "cuda:1"
    assert [shape.device for shape in shapes[1:]] == ["cpu"] * (len(shapes) - 1)
    assert shapes[offloaded].decomposition_per_token == whole[offloaded].decomposition_per_token
