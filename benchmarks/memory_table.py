"""The memory table of docs/big-models.md: what a capture and its traces need for real models' shapes.

    .venv/bin/python benchmarks/memory_table.py            # the markdown table, 8k / 32k / 128k tokens
    .venv/bin/python benchmarks/memory_table.py --tokens 4096 16384 --store-dtype float32

The shapes are written here from the published configs (no download): layers, hidden width, attention heads,
the heads and widths of the keys and values the Run keeps (DeepSeek-V3's MLA expands its latent to every head's
own key of 128 + 64 and value of 128), the MLP width the forward pass materialises. Every model is bfloat16 on a
GPU, so the capture records no log-sum-exp (that is the CPU's float32 path). The arithmetic is
``spantrace.memory.plan_memory``, the same the library runs before each capture.
"""

from __future__ import annotations

import argparse

from spantrace.memory import LayerShape, plan_memory

# name: (layers, hidden D, query heads H, kept K/V heads G, key width, value width, MLP width of the forward pass)
MODELS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "Qwen3-8B": (36, 4096, 32, 8, 128, 128, 12288),
    "gpt-oss-120b": (36, 2880, 64, 8, 64, 64, 2880),  # MoE: one expert's width (the router runs a few at a time)
    "Llama-3.3-70B": (80, 8192, 64, 8, 128, 128, 28672),
    "DeepSeek-V3": (61, 7168, 128, 128, 192, 128, 18432),  # MLA; the first 3 layers' dense MLP is the widest
}
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def rows(tokens: list[int], store_dtype: str, chunk_size: int) -> list[dict[str, object]]:
    """One row per (model, tokens): capture, key/value cache, working peak, total, in GiB (one device holding
    every layer; with a device map each device holds its layers' share, and the working peak is per device)."""
    table = []
    for name, (layers, hidden, heads, kv_heads, key_dim, value_dim, intermediate) in MODELS.items():
        shape = LayerShape(
            device="cuda", hidden=hidden, heads=heads, kv_heads=kv_heads, key_dim=key_dim, value_dim=value_dim
        )
        for n in tokens:
            plan = plan_memory(
                [shape] * layers, n, store_bytes=BYTES[store_dtype], model_bytes=2, chunk_size=chunk_size,
                intermediate=intermediate,
            )
            gpu, cpu = plan.devices["cuda"], plan.devices["cpu"]
            table.append({
                "model": name, "tokens": n, "capture": (gpu.capture + cpu.capture) / 2**30,
                "cache": gpu.cache / 2**30, "working": gpu.working / 2**30,
                "total": (gpu.total + cpu.capture) / 2**30,
            })
    return table


def markdown(table: list[dict[str, object]]) -> str:
    lines = [
        "| model | tokens | capture (GiB) | keys/values (GiB) | working peak (GiB) | total (GiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        lines.append(
            f"| {row['model']} | {row['tokens'] // 1024}k | {row['capture']:.1f} | {row['cache']:.1f} | "
            f"{row['working']:.1f} | {row['total']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--store-dtype", choices=sorted(BYTES), default="bfloat16")
    parser.add_argument("--chunk-size", type=int, default=128)
    args = parser.parse_args(argv)
    text = markdown(rows(args.tokens, args.store_dtype, args.chunk_size))
    print(text)
    return text


if __name__ == "__main__":
    main()
