"""``python -m spantrace``: the same as the ``spantrace`` command."""

from .cli import main

main()
