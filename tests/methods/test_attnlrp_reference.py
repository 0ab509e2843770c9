"""AttnLRP against a slow float64 re-derivation of its rules, written here layer by layer as relevance messages.

No autograd and nothing of ``spantrace.methods``: the forward pass of a tiny Llama is recomputed from its
weights, then relevance flows back rule by rule (Achtibat et al. 2024), each as ``R(input)`` from ``R(output)``:

- linear ``z = W x`` (ε-rule, ε → 0): ``R(x_i) = x_i Σ_j W_ji R(z_j) / z_j`` (the rotary rotation is one too);
- a sum ``h = x + a`` (the residual): ``R(x) = x / h · R(h)``, ``R(a) = a / h · R(h)``;
- RMSNorm and SiLU: identity, ``R(x) = R(y)``;
- a sum of products (``gate ⊙ up``, ``q·kᵀ``, ``attention · V``): each term ``t`` takes ``t / z · R(z)``, half
  of it to each factor;
- softmax: ``R(x_i) = x_i (R(s_i) − s_i Σ_j R(s_j))``.

A position's relevance is the sum over its embedding's channels; they must equal ``attnlrp_relevance``'s value
by value.
"""

from __future__ import annotations

import torch
from method_cases import SINK_WEIGHTS, SINKS, make_run

from spantrace.methods.attnlrp import attnlrp_relevance


def linear_relevance(x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """ε-rule of ``z = x Wᵀ`` (x [T, I], weight [O, I], z and relevance [T, O]) -> R(x) [T, I]."""
    return x * ((relevance / z) @ weight)


def rms_scale(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """``γ / rms(x)`` per row: the norm as a constant factor."""
    eps = norm.variance_epsilon
    return norm.weight.double() / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[T, d, d]: ``q ↦ q·cos + rotate_half(q)·sin`` per position, written as a matrix."""
    d = cos.shape[-1]
    half = torch.zeros(d, d, dtype=torch.float64)  # rotate_half(q) = half @ q: (−q₂, q₁)
    half[: d // 2, d // 2 :] = -torch.eye(d // 2, dtype=torch.float64)
    half[d // 2 :, : d // 2] = torch.eye(d // 2, dtype=torch.float64)
    return torch.diag_embed(cos) + sin[:, :, None] * half[None]


def reference_relevance(run, sinks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Relevance of each position's embedding for ``Σ_i w_i · logit(token_i at i − 1)``, rule by rule."""
    model = run.model.hf_model
    config = model.config
    length = int(sinks.max())  # positions 0 … last sink − 1 are read
    ids = torch.tensor(run.token_ids[:length])
    heads, groups, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    per_group = heads // groups
    scale = d**-0.5
    layers = model.model.layers
    hidden = model.model.embed_tokens.weight.double()[ids]  # [T, D]
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(hidden[None], torch.arange(length)[None])
    rotation = rotation_matrices(cos[0].double(), sin[0].double())  # [T, d, d]
    visible = torch.ones(length, length, dtype=torch.bool).tril()

    saved = []
    for layer in layers:  # forward, keeping every intermediate
        attention, mlp = layer.self_attn, layer.mlp
        wq, wk, wv, wo = (m.weight.double() for m in (attention.q_proj, attention.k_proj, attention.v_proj,
                                                       attention.o_proj))
        n1 = hidden * rms_scale(hidden, layer.input_layernorm)
        q, k, v = n1 @ wq.T, n1 @ wk.T, n1 @ wv.T
        qr = torch.einsum("tab,thb->tha", rotation, q.view(length, heads, d))
        kr = torch.einsum("tab,tgb->tga", rotation, k.view(length, groups, d))
        kr_h, v_h = kr.repeat_interleave(per_group, 1), v.view(length, groups, d).repeat_interleave(per_group, 1)
        logits = torch.einsum("ihd,jhd->hij", qr, kr_h) * scale
        p = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1)
        o = torch.einsum("hij,jhd->ihd", p, v_h)  # [T, H, d]
        a = o.reshape(length, -1) @ wo.T
        h1 = hidden + a
        n2 = h1 * rms_scale(h1, layer.post_attention_layernorm)
        wg, wu, wd = (m.weight.double() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        gate, up = n2 @ wg.T, n2 @ wu.T
        product = torch.nn.functional.silu(gate) * up
        m = product @ wd.T
        out = h1 + m
        saved.append(dict(x=hidden, n1=n1, q=q, k=k, v=v, qr=qr, kr=kr, kr_h=kr_h, v_h=v_h, logits=logits, p=p,
                          o=o, a=a, h1=h1, n2=n2, gate=gate, up=up, product=product, m=m, out=out, wq=wq, wk=wk,
                          wv=wv, wo=wo, wg=wg, wu=wu, wd=wd))
        hidden = out

    # the target: z_i = final_norm(h[i − 1]) · W_lm[token_i]; R(z_i) = w_i z_i
    readout, targets = sinks - 1, torch.tensor([run.token_ids[s] for s in sinks])
    final = hidden[readout] * rms_scale(hidden[readout], model.model.norm)
    rows = model.get_output_embeddings().weight.double()[targets]
    relevance = torch.zeros_like(hidden)
    relevance[readout] = final * rows * weights.double()[:, None]  # linear rule of z_i = final_i · row_i, then norm

    for s in reversed(saved):  # backward, rule by rule
        r_h1 = s["h1"] / s["out"] * relevance  # residual
        r_m = s["m"] / s["out"] * relevance
        r_product = linear_relevance(s["product"], s["wd"], s["m"], r_m)
        r_gate = r_up = r_product / 2  # uniform rule; SiLU passes R(gate) unchanged
        r_h1 = r_h1 + linear_relevance(s["n2"], s["wg"], s["gate"], r_gate)
        r_h1 = r_h1 + linear_relevance(s["n2"], s["wu"], s["up"], r_up)  # norm: identity
        r_x = s["x"] / s["h1"] * r_h1  # residual
        r_a = s["a"] / s["h1"] * r_h1
        r_o = linear_relevance(s["o"].reshape(length, -1), s["wo"], s["a"], r_a).view(length, heads, d)
        # o[i,h,:] = Σ_j p[h,i,j] v[j,h,:]: each term's share, half to p and half to v
        share = torch.einsum("hij,jhd->hijd", s["p"], s["v_h"]) / s["o"].permute(1, 0, 2)[:, :, None] \
            * r_o.permute(1, 0, 2)[:, :, None]
        r_p = share.sum(-1) / 2  # [H, T, T]
        r_v = (share.sum(1) / 2).permute(1, 0, 2).reshape(length, groups, per_group, d).sum(2)  # [T, G, d]
        # softmax rule on the visible logits
        logits = s["logits"].masked_fill(~visible, 0.0)
        r_logits = logits * (r_p - s["p"] * r_p.sum(-1, keepdim=True))
        # logits[h,i,j] = scale Σ_d qr[i,h,d] kr[j,h,d]
        terms = torch.einsum("ihd,jhd->hijd", s["qr"], s["kr_h"]) * scale
        safe = torch.where(visible, s["logits"], torch.ones_like(s["logits"]))
        share = terms / safe[..., None] * r_logits[..., None]
        r_qr = (share.sum(2) / 2).permute(1, 0, 2)  # [T, H, d]
        r_kr = (share.sum(1) / 2).permute(1, 0, 2).reshape(length, groups, per_group, d).sum(2)
        # rotary, a linear map per position: R(q_b) = q_b Σ_a M_ab R(qr_a) / qr_a
        r_q = s["q"].view(length, heads, d) * torch.einsum("tab,tha->thb", rotation, r_qr / s["qr"])
        r_k = s["k"].view(length, groups, d) * torch.einsum("tab,tga->tgb", rotation, r_kr / s["kr"])
        r_n1 = (linear_relevance(s["n1"], s["wq"], s["q"], r_q.reshape(length, -1))
                + linear_relevance(s["n1"], s["wk"], s["k"], r_k.reshape(length, -1))
                + linear_relevance(s["n1"], s["wv"], s["v"], r_v.reshape(length, -1)))
        relevance = r_x + r_n1  # the norm's identity rule
    return relevance.sum(-1)  # [T]


def test_attnlrp_equals_the_rules_applied_by_hand() -> None:
    run = make_run("llama", dtype=torch.float64)
    assert run.model.hf_model.config.model_type == "llama"
    with torch.no_grad():
        want = reference_relevance(run, SINKS, SINK_WEIGHTS)
    got = attnlrp_relevance(run, SINKS, SINK_WEIGHTS, chunk_size=4).scores.double()
    length = want.shape[0]
    assert float(want.abs().max()) > 1e-3  # relevance is not all zero
    torch.testing.assert_close(got[:length], want, rtol=1e-6, atol=1e-9)
    assert torch.all(got[length:] == 0)
