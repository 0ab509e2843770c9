"""Text and layout types: what everything above reads; imports nothing of spantrace but errors."""
