"""The evaluation data files bundled with spantrace (not Python code); README.md here describes them.

The files keep their own licences (NOTICE.md, LICENSE-GSM8K.txt), not spantrace's Apache-2.0.
"""
