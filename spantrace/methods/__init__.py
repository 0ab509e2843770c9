"""Attribution methods, one file each, every one registered by name (``registry``) through one interface
(``base.AttributionMethod``). Importing this package registers the built-in methods below."""

from . import (  # noqa: F401  (importing a method's module registers it)
    attention_weights,
    attnlrp,
    flashtrace,
    grad_input,
    ifr,
    ifr_rollout,
    integrated_gradients,
    occlusion,
    rollout,
)
