"""Faithfulness evaluation: metrics (``metrics``), deletion/insertion curves (``curves``), tasks
(``tasks``), the shared prompt builder (``prompts``), the results file (``results``: locked, validated, rows
written whole), the resumable runner (``runner``) and the results report (``report``). Submodules are imported
on use; nothing heavy happens here."""
