"""What the viewer tests share: small server limits (every 4xx is cheap to reach) and one prompt."""

from __future__ import annotations

from spantrace.serve import Limits

LIMITS = Limits(max_body_bytes=64 * 1024, max_prompt_chars=2_000, max_tokens=200, max_new_tokens=16, max_runs=3)
PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
OUTPUT = "He buys 4 more, so he has 3 + 4 = 7 apples. The answer is 7."
