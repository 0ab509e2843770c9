"""The architecture adapters: the registry (``registry``), what each supported type covers (``catalog``) and one
file per family. Importing this package registers every built-in family with ``registry.register_adapter``,
as an outside user registers one."""

from . import deepseek, gemma4, gpt2, llama, llama4, mamba_hybrid, olmo, qwen_hybrid, vision  # noqa: F401  (registers them)
