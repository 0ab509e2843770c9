"""The interactive viewer (``spantrace serve``): a local web page and JSON API over ``Model.run`` / ``Run.trace``.

    from spantrace.serve import create_app
    app = create_app(spantrace.load())   # then: uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from .app import create_app
from .schemas import Limits

__all__ = ["Limits", "create_app"]
