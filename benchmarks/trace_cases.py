"""The cases ``bench_trace.py`` times: which model (the built-in one, a tiny random one, or a random-weight
model shaped like a published 8B or hybrid config, built on the meta device with no download), which tokens,
and what each job traces (``Workload``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    import spantrace

HAYSTACK = "haystack_public_domain.txt"  # bundled with spantrace: spantrace.eval.tasks.files.data_file
DTYPES = ("bfloat16", "float16", "float32")

# Random-weight stand-ins for real 8B models: the shapes (and so the cost) of the published configs.
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
    "qwen3-8b": {  # Qwen3 attention has RMSNorms on the queries and keys (q_norm, k_norm)
        "model_type": "qwen3",
        "hidden_size": 4096,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
    # Hybrids the size of the built-in model (576 wide, 12 layers): Qwen3.5's 3 Gated DeltaNet layers per gated
    # attention layer, and Nemotron-H's Mamba-2 / attention blocks each followed by an MLP block.
    "qwen3.5-small": {
        "model_type": "qwen3_5_text",
        "hidden_size": 576,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "linear_num_key_heads": 8,
        "linear_num_value_heads": 8,
        "linear_key_head_dim": 64,
        "linear_value_head_dim": 64,
        "linear_conv_kernel_dim": 4,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
    "nemotron-h-small": {
        "model_type": "nemotron_h",
        "hidden_size": 576,
        "layers_block_type": ["linear_attention", "mlp", "linear_attention", "mlp", "full_attention", "mlp"] * 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 72,
        "mamba_num_heads": 16,
        "mamba_head_dim": 72,
        "ssm_state_size": 64,
        "n_groups": 4,
        "conv_kernel": 4,
        "chunk_size": 128,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
}
HYBRID_TYPES = frozenset({"qwen3_5_text", "nemotron_h"})  # no arithmetic limit is computed for these


class Setup(NamedTuple):
    """Which model a child process builds, and where."""

    source: str | None = None  # --model: None for the built-in model, "tiny" for --smoke
    shape: str = "builtin"
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: the model's default (bfloat16 for the 8B shapes)
    layers: int | None = None  # scaled-down shapes (tests, CPU checks)
    hidden: int | None = None

    def argv(self) -> list[str]:
        """The command-line options that rebuild this setup in a child process."""
        options = ["--shape", self.shape]
        for flag, value in (
            ("--model", self.source),
            ("--device", self.device),
            ("--dtype", self.dtype),
            ("--layers", self.layers),
            ("--hidden", self.hidden),
        ):
            if value is not None:
                options += [flag, str(value)]
        return options


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model() -> spantrace.Model:
    """A small random Llama for --smoke runs (no download, seconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import spantrace

    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50000,
        max_position_embeddings=4096,
    )
    return spantrace.Model(AutoModelForCausalLM.from_config(config).eval(), model_id="tiny-random-llama")


def shape_config(shape: str, *, layers: int | None = None, hidden: int | None = None) -> Any:
    """The transformers config of ``shape``; ``layers`` / ``hidden`` scale it down (heads and MLP in proportion)."""
    from transformers import AutoConfig

    values = dict(SHAPES[shape])
    model_type = values.pop("model_type")
    if layers is not None and "layers_block_type" in values:
        values["layers_block_type"] = values["layers_block_type"][:layers]
    elif layers is not None:
        values["num_hidden_layers"] = layers
    if hidden is not None:  # keep head_dim, GQA ratio and MLP ratio; fewer heads
        scale = hidden / values["hidden_size"]
        heads = max(1, round(values["num_attention_heads"] * scale))
        groups = values["num_attention_heads"] // values["num_key_value_heads"]
        values["hidden_size"] = hidden
        values["num_attention_heads"] = heads
        values["num_key_value_heads"] = max(1, heads // groups)
        values["intermediate_size"] = max(1, round(values["intermediate_size"] * scale))
    return AutoConfig.for_model(model_type, **values)


def init_weights(model: torch.nn.Module, *, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic weights for a model materialised with ``to_empty``: matrices ~ N(0, std), norm weights 1,
    biases 0; buffers such as rotary ``inv_freq`` recomputed from the config (``to_empty`` leaves them garbage).
    """
    import torch

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, std, generator=generator)
            elif name.endswith("bias"):
                parameter.zero_()
            else:  # RMSNorm weights (input, post-attention, final, and Qwen3's q_norm / k_norm)
                parameter.fill_(1.0)
        for module in model.modules():
            buffers = dict(module.named_buffers(recurse=False))
            if not buffers:
                continue
            config = getattr(module, "config", None)
            if config is None:
                raise RuntimeError(f"cannot recompute the buffers {sorted(buffers)} of {type(module).__name__}")
            fresh = type(module)(config)  # on the CPU: rotary embeddings compute inv_freq in __init__
            for name, buffer in fresh.named_buffers(recurse=False):
                buffers[name].copy_(buffer)


def shaped_model(
    shape: str,
    *,
    device: str | None = None,
    dtype: str = "bfloat16",
    layers: int | None = None,
    hidden: int | None = None,
    seed: int = 0,
) -> spantrace.Model:
    """A random-weight model shaped like ``shape`` (see ``SHAPES``), built on the meta device and materialised
    on ``device`` without a download; checked to give finite logits (which also warms CUDA up)."""
    import torch
    from transformers import AutoModelForCausalLM

    import spantrace

    device = device or default_device()
    config = shape_config(shape, layers=layers, hidden=hidden)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    hf_model.to_empty(device=device)
    init_weights(hf_model, seed=seed)
    hf_model.eval()
    probe = torch.randint(10, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        logits = hf_model(probe.to(device), use_cache=False).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"the random {shape} model gives non-finite logits")
    scaled = "" if layers is None and hidden is None else f"-{config.num_hidden_layers}L-{config.hidden_size}h"
    return spantrace.Model(hf_model, model_id=f"random-{shape}{scaled}")


def build_model(setup: Setup) -> spantrace.Model:
    """The model ``setup`` names: a random ``--shape``, the --smoke tiny model, or ``spantrace.load(--model)``."""
    if setup.shape != "builtin":
        return shaped_model(
            setup.shape, device=setup.device, dtype=setup.dtype or "bfloat16", layers=setup.layers, hidden=setup.hidden
        )
    import torch

    import spantrace

    if setup.source == "tiny":
        model = tiny_model()
        if setup.device or setup.dtype:
            model.hf_model.to(device=setup.device, dtype=getattr(torch, setup.dtype) if setup.dtype else None)
        return model

    return spantrace.load(setup.source, dtype=setup.dtype, device=setup.device)


class Workload(NamedTuple):
    """What each job traces: the prompt's share of the tokens, the span, the hops, and sampled IFR rows."""

    prompt_share: float = 0.75
    span_tokens: int = 32
    hops: int = 1
    ifr_rows: int | None = None  # time token-wise IFR on this many span rows and scale up (hops = 0)
    repeats: int = 2  # the paired job: best of this many forward passes and traces

    def argv(self) -> list[str]:
        options = ["--prompt-share", str(self.prompt_share), "--span-tokens", str(self.span_tokens)]
        options += ["--hops", str(self.hops), "--repeats", str(self.repeats)]
        return options + (["--ifr-rows", str(self.ifr_rows)] if self.ifr_rows else [])


DEFAULT_WORKLOAD = Workload()


def token_ids(model: spantrace.Model, length: int) -> torch.Tensor:
    import torch

    from spantrace.eval.tasks.files import data_file

    if model.tokenizer is not None:
        text = data_file(HAYSTACK).read_text(encoding="utf-8")[: length * 8]
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        if len(ids) == length:
            return torch.tensor(ids)
    vocab = model.hf_model.get_input_embeddings().num_embeddings
    return torch.randint(10, min(40000, vocab), (length,), generator=torch.Generator().manual_seed(0))
