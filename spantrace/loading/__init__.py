"""Loading a causal LM and its tokenizer: from a hub id, a folder, a GGUF file or a model object (``hub``), and
the built-in model (``builtin``)."""
