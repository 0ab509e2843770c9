"""Pure tensor maths, no model inside: proximities and edges (``proximity``), attention rows and their
weighted sums (``rows``), the chunked gated delta rule (``delta_rule``) and the Mamba-2 scans (``ssd_scan``)."""
