import sys
from pathlib import Path

import pytest

# Test helpers (tiny_models, reference) are imported as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tokenizer():
    """The built-in model's tokenizer (no model weights loaded when its cache is complete)."""
    from transformers import AutoTokenizer

    from spantrace.model import builtin

    entry = builtin.cache_entry()
    if builtin.is_complete(entry):
        return AutoTokenizer.from_pretrained(entry)
    return builtin.load_builtin()[1]
