import sys
from pathlib import Path

# The hybrids' end-to-end tests reuse the tiny models and float64 references of the layer tests
# (tests/layers/test_deltanet.py, tests/layers/test_mamba2.py), imported as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers"))
