"""Mixing layers: each decoder layer's token mixing split exactly over source positions (``MixingLayer``).

Softmax attention (``softmax``), the hybrids' gated attention, Gated DeltaNet and Mamba-2 layers, the
``SplitLayer`` view over them (``split``), and the per-layer dispatch with the Run's cache (``dispatch``).
"""
