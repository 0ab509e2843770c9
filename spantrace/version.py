"""The package version (one place; ``spantrace.__version__`` and every result's ``info`` read it)."""

__version__ = "0.1.0"
