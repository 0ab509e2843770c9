"""Showing a ``TraceResult``: a Rich terminal heatmap (``terminal``) and a self-contained HTML report (``html``).

Both read only the result (tokens, scores, ρ, span, info), so a result loaded from JSON renders the same.
``heat`` holds what they share: score normalisation, the colour ramp and token display rules.
"""
