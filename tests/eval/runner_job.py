"""A small evaluation on a tiny random model with the built-in tokenizer (run in-process or as a script).

    python tests/eval/runner_job.py OUT.jsonl    # used by the SIGKILL resume test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import make_tiny_model  # noqa: E402

import spantrace  # noqa: E402
from spantrace.eval.runner import EvalConfig, run_eval  # noqa: E402

CONFIG = EvalConfig(task="niah_single", methods=("flashtrace", "attention-last"), n=5, length=160, steps=4,
                    max_new_tokens=6, haystack="noise")


def tiny_model(tokenizer) -> spantrace.Model:
    """A tiny llama with the tokenizer's vocabulary: random, fast, and never says EOS by design."""
    return spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512),
                           tokenizer, "tiny-llama")


def load_tiny_model() -> spantrace.Model:
    """``tiny_model`` with the built-in tokenizer (a zero-argument loader, as Ray workers need)."""
    from transformers import AutoTokenizer

    from spantrace.loading import builtin

    return tiny_model(AutoTokenizer.from_pretrained(builtin.cache_entry()))


def main(out: str) -> None:
    run_eval(load_tiny_model(), CONFIG, out)


if __name__ == "__main__":
    main(sys.argv[1])
