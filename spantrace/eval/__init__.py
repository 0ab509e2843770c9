"""Faithfulness evaluation: metrics (``metrics``), deletion/insertion curves (``curves``), tasks
(``tasks``), the shared prompt builder (``prompts``), the resumable runner (``runner``) and the
results report (``report``). Submodules are imported on use; nothing heavy happens here."""
