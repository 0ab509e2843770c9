"""Text and layout types: what everything above reads. Imports nothing of spantrace but ``errors``.

- ``layout``: character ranges, the given pieces of an input (``Segment``) and every token's place (``Layout``);
- ``pieces``: sentences, lines and the end of a text's content;
- ``charmap``: the character range each generated token carries (``CharMap``);
- ``tokens``: token rules (special tokens, stop tokens) and token strings.
"""
