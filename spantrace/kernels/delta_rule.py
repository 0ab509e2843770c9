r"""The gated delta rule's token mixing ``o = A v`` as a linear operator in chunked form, and its transpose.

Per head, with keys ``k_t`` (l2-normed), queries ``q_t`` (l2-normed, scaled by ``d_k^{−1/2}``), ``β_t`` and
log-decays ``g_t``, the state ``S_t = e^{g_t}(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`` and read-out
``o_t = S_tᵀ q_t`` make ``o = A v`` linear in the values (see ``deltanet.py`` for ``A``). In blocks of Q
positions (Q = 64), writing γ for the decay accumulated from a chunk's start (``Γ_t = Σ_{s ≤ t} g_s`` inside
the chunk) and ``D[i, j] = e^{Γ_i − Γ_j}`` for ``i ≥ j`` (0 above the diagonal):

    L = I + strictly_lower((β ⊙ K) Kᵀ ⊙ D)                         the chunk's UT system  [Q, Q]
    a = L⁻¹ (β ⊙ V),   K̃ = L⁻¹ (β ⊙ e^{Γ} ⊙ K)                    [Q, W], [Q, d_k]
    v_new = a − K̃ S,   O = (e^{Γ} ⊙ Q) S + (Q Kᵀ ⊙ D) v_new
    S ← e^{Γ_last} S + (e^{Γ_last − Γ} ⊙ K)ᵀ v_new                 the state carried to the next chunk

— the same blocks the model's own chunked kernel uses. Everything but ``V`` (the inverses ``L⁻¹``, K̃, the
decayed queries and keys, the in-chunk products) depends only on q, k, β and g, so ``DeltaRule`` computes
it once per layer; ``forward(V)`` is then a few matmuls per chunk, and ``transpose(Y) = Aᵀ Y`` runs the
same steps backwards (the adjoint of each one), which is what span aggregates and per-sink rows need:

    g_new = (Q Kᵀ ⊙ D)ᵀ Y_c + (e^{Γ_last − Γ} ⊙ K) G,    G ← (e^{Γ} ⊙ Q)ᵀ Y_c + e^{Γ_last} G − K̃ᵀ g_new,
    (Aᵀ Y)_c = β ⊙ (L⁻ᵀ g_new),                            from the last chunk back, G = 0 after it.

Cost: the inverses once, O(N·Q·(Q + d_k)) per head; each forward or transpose O(N·(Q + d_k)·W) per head.
Memory: two ``[H, N, Q]`` and two ``[H, N, d_k]`` tensors per layer. Positions past N are padding with
β = 0 and g = 0, which neither write to the state nor are read before they occur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64


class DeltaRule:
    """``v ↦ A v`` and ``y ↦ Aᵀ y`` per head for fixed q, k, β, g (all ``[H, N, ·]`` in one dtype)."""

    def __init__(
        self, queries: torch.Tensor, keys: torch.Tensor, beta: torch.Tensor, log_decay: torch.Tensor, chunk: int = CHUNK
    ) -> None:
        heads, length, key_dim = keys.shape
        self.length, self.chunk = length, chunk
        pad = (-length) % chunk
        self.chunks = (length + pad) // chunk

        def blocks(x: torch.Tensor) -> torch.Tensor:  # [H, N, ...] -> [H, C, Q, ...]
            x = F.pad(x, (0, 0, 0, pad)) if x.dim() == 3 else F.pad(x, (0, pad))
            return x.reshape(heads, self.chunks, chunk, *x.shape[2:])

        q, k, b, g = blocks(queries), blocks(keys), blocks(beta), blocks(log_decay)
        within = g.cumsum(-1)  # Γ: [H, C, Q]
        above = torch.ones(chunk, chunk, dtype=torch.bool, device=keys.device).triu(1)
        decay = (within[..., :, None] - within[..., None, :]).masked_fill(above, float("-inf")).exp()  # D
        beta_keys = k * b[..., None]
        system = (beta_keys @ k.mT) * decay  # [H, C, Q, Q]
        eye = torch.eye(chunk, dtype=keys.dtype, device=keys.device)
        self.inverse = torch.linalg.solve_triangular(
            system.tril(-1) + eye, eye.expand_as(system), upper=False, unitriangular=True
        )  # L⁻¹: [H, C, Q, Q]
        self.beta = b  # [H, C, Q]
        self.decayed_beta_keys = self.inverse @ (beta_keys * within.exp()[..., None])  # K̃: [H, C, Q, d_k]
        self.in_chunk = (q @ k.mT) * decay  # [H, C, Q, Q]
        self.decayed_queries = q * within.exp()[..., None]  # [H, C, Q, d_k]
        self.keys_to_end = k * (within[..., -1:] - within).exp()[..., None]  # [H, C, Q, d_k]
        self.chunk_decay = within[..., -1].exp()[..., None, None]  # [H, C, 1, 1]
        self.key_dim = key_dim

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``[H, N, W]`` -> ``[H, C, Q, W]`` (zero padding)."""
        pad = self.chunks * self.chunk - self.length
        return F.pad(x, (0, 0, 0, pad)).reshape(x.shape[0], self.chunks, self.chunk, x.shape[-1])

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``o = A v``: values ``[H, N, W]`` -> ``[H, N, W]``."""
        heads, _, width = values.shape
        start = self.inverse @ (self._blocks(values) * self.beta[..., None])  # a: [H, C, Q, W]
        state = values.new_zeros(heads, self.key_dim, width)
        out = torch.empty_like(start)
        for c in range(self.chunks):
            fresh = start[:, c] - self.decayed_beta_keys[:, c] @ state  # v_new: [H, Q, W]
            out[:, c] = self.decayed_queries[:, c] @ state + self.in_chunk[:, c] @ fresh
            state = self.chunk_decay[:, c] * state + self.keys_to_end[:, c].mT @ fresh
        return out.reshape(heads, -1, width)[:, : self.length]

    def transpose(self, cotangent: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: cotangent ``[H, N, W]`` -> ``[H, N, W]`` (the forward steps' adjoints, last chunk first)."""
        heads, _, width = cotangent.shape
        blocks = self._blocks(cotangent)
        state = cotangent.new_zeros(heads, self.key_dim, width)  # G, the cotangent of the carried state
        fresh = torch.empty_like(blocks)
        for c in reversed(range(self.chunks)):
            grad = self.in_chunk[:, c].mT @ blocks[:, c] + self.keys_to_end[:, c] @ state  # [H, Q, W]
            state = (
                self.decayed_queries[:, c].mT @ blocks[:, c]
                + self.chunk_decay[:, c] * state
                - self.decayed_beta_keys[:, c].mT @ grad
            )
            fresh[:, c] = grad
        out = (self.inverse.mT @ fresh) * self.beta[..., None]  # [H, C, Q, W]
        return out.reshape(heads, -1, width)[:, : self.length]
