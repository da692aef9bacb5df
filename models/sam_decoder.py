"""SAM's mask decoder for many prompts on one image, computed with fewer operations on a CPU.

``MaskDecoder.predict_masks`` copies the 64x64x256 image embedding once per prompt
(``repeat_interleave``) and projects all 4,096 image tokens in every attention, for every
prompt: on a CPU this, not the image encoder, costs most of an automatic-mask run (about 0.1 s
a prompt, 3 masks each). The same function is computed here from the same weights, reordered:

- the first block's image side does not depend on the prompt (image embedding plus the one
  no-mask embedding): its projections are computed once and broadcast;
- a projection of image tokens that only feeds a dot product with a few token vectors is
  folded into those vectors: ``(K W^T) q = K (W^T q)`` (7 tokens x 8 heads instead of 4,096);
  attention weights sum to one, so ``P (K W^T + b) = (P K) W^T + b``;
- the image tokens' update from 7 tokens has rank <= 56: ``P V W_o^T`` is ``P (V W_o^T)``;
- the two stride-2 transposed convolutions are per-pixel matrix products, done as such, and
  the pixel shuffle is applied to the three output masks only.

Results equal the stock decoder's up to float rounding (about 1e-5 of the logits' scale, see
tests/models/test_masks.py), so the masks thresholded from them are the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _heads(x: Tensor, n: int) -> Tensor:
    """(B, L, D) -> (B, n, L, D/n)."""
    b, length, d = x.shape
    return x.reshape(b, length, n, d // n).transpose(1, 2)


def _softmax_small(x: Tensor) -> Tensor:
    """Softmax over a short last axis (the 7 tokens): torch's kernel is ~10x slower there than
    these four passes over the data."""
    x = x - x.amax(dim=-1, keepdim=True)
    x = x.exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


def _token_to_image(attn, q_tokens: Tensor, keys: Tensor, key_pe: Tensor) -> Tensor:
    """``attn(q=q_tokens, k=keys + key_pe, v=keys)``: tokens (B, T, C) read image keys (1 or B, N, C)."""
    h = attn.num_heads
    q = _heads(attn.q_proj(q_tokens), h)  # (B, h, T, d)
    d = q.shape[-1]
    if keys.shape[0] == 1:  # shared by every prompt: project the 4,096 tokens once
        k = _heads(attn.k_proj(keys + key_pe), h)
        v = _heads(attn.v_proj(keys), h)
        out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    else:
        b, t = q.shape[0], q.shape[2]
        wk = attn.k_proj.weight.reshape(h, d, -1)  # (h, d, C)
        # q . (W_k x + b_k) = (W_k^T q) . x + const over x: the constant cancels in the softmax.
        qk = torch.einsum("bhtd,hdc->bhtc", q, wk).reshape(b, h * t, -1)
        # (keys + pe) qk^T without materialising keys + pe: the pe part for all prompts in one GEMM;
        # laid out (B, N, hT) so the big keys tensor is never transposed.
        pe_part = (key_pe[0] @ qk.reshape(-1, qk.shape[-1]).T).reshape(-1, b, h * t).transpose(0, 1)
        p = torch.softmax(torch.baddbmm(pe_part, keys, qk.transpose(1, 2)) / math.sqrt(d), dim=1)  # (B, N, hT)
        pk = torch.bmm(p.transpose(1, 2), keys).reshape(b, h, t, -1)  # rows sum to 1: P(KW^T + b) = (PK)W^T + b
        out = torch.einsum("bhtc,hdc->bhtd", pk, attn.v_proj.weight.reshape(h, d, -1)) + attn.v_proj.bias.reshape(h, 1, d)
    b, _, t, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, -1))


def _image_to_token(attn, keys: Tensor, key_pe: Tensor, q_tokens: Tensor,
                    tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``attn(q=keys + key_pe, k=q_tokens, v=tokens)``: image keys (1 or B, N, C) read the tokens
    (B, T, C); returns the (B, N, C) update as ``P @ M + b_out`` with P (B, N, h*T), M (B, h*T, C), as (P, M, b_out)."""
    h = attn.num_heads
    k = _heads(attn.k_proj(q_tokens), h)  # (B, h, T, d)
    v = _heads(attn.v_proj(tokens), h)
    b, _, t, d = k.shape
    if keys.shape[0] == 1:
        q = _heads(attn.q_proj(keys + key_pe), h)  # (1, h, N, d), once
        logits = (q @ k.transpose(-1, -2)).transpose(1, 2)  # (B, N, h, T)
    else:
        wq = attn.q_proj.weight.reshape(h, d, -1)
        kq = torch.einsum("bhtd,hdc->bhtc", k, wq).reshape(b, h * t, -1)  # (W_q^T k): (B, hT, C)
        bias = torch.einsum("bhtd,hd->bht", k, attn.q_proj.bias.reshape(h, d)).reshape(b, 1, h * t)
        pe_part = (key_pe[0] @ kq.reshape(-1, kq.shape[-1]).T).reshape(-1, b, h * t).transpose(0, 1) + bias
        logits = torch.baddbmm(pe_part, keys, kq.transpose(1, 2)).reshape(b, -1, h, t)
    # In fp32 even when the decoder computes in bf16: exp over a short axis is 2x faster there.
    p = _softmax_small(logits.float() / math.sqrt(d)).to(logits.dtype).reshape(b, -1, h * t)
    wo = attn.out_proj.weight.reshape(-1, h, d)  # (C, h, d)
    m = torch.einsum("bhtd,chd->bhtc", v, wo).reshape(b, h * t, -1)  # V W_o^T, per head
    return p, m, attn.out_proj.bias


def _transformer(tr, image: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward`` with image (1, N, C) shared by the B prompts."""
    queries, keys = point_embedding, image
    for layer in tr.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, queries + point_embedding,
                                                        keys, image_pe))
        queries = layer.norm3(queries + layer.mlp(queries))
        p, m, b_out = _image_to_token(layer.cross_attn_image_to_token, keys, image_pe, queries + point_embedding,
                                      queries)
        keys = layer.norm4(torch.baddbmm((keys + b_out).expand(p.shape[0], -1, -1), p, m))  # (B, N, C) from here on
    attn_out = _token_to_image(tr.final_attn_token_to_image, queries + point_embedding, keys, image_pe)
    return tr.norm_final_attn(queries + attn_out), keys


def _upscale_masks(dec, keys: Tensor, hyper: Tensor, side: int, rows: int) -> Tensor:
    """``output_upscaling`` then ``hyper @ upscaled``: keys (B, N, C) on a side x side grid, hyper
    (B, K, C/8) -> masks (B, K, 4*rows, 4*side), the top ``rows`` rows of the grid only (the rest
    is padding below the image: every output row reads one input row)."""
    conv1, ln, act1, conv2, act2 = dec.output_upscaling
    keys = keys[:, : rows * side]
    b, n, _ = keys.shape
    # A stride-2 2x2 transposed convolution is a per-pixel linear map C_in -> (2*2*C_out).
    w1 = conv1.weight.permute(2, 3, 1, 0).reshape(-1, conv1.weight.shape[0])  # (4*C/4, C)
    x = F.linear(keys, w1, conv1.bias.repeat(4)).reshape(b, n, 4, -1)
    x = act1(F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps))  # LayerNorm2d: over channels
    w2 = conv2.weight.permute(2, 3, 1, 0).reshape(-1, conv2.weight.shape[0])
    x = act2(F.linear(x, w2, conv2.bias.repeat(4)).reshape(b, n, 4, 4, -1))  # (B, N, (i1 j1), (i2 j2), C/8)
    m = (x.reshape(b, -1, x.shape[-1]) @ hyper.transpose(1, 2)).reshape(b, rows, side, 2, 2, 2, 2, -1)
    # row 4y + 2*i1 + i2, column 4x + 2*j1 + j2
    return m.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, -1, 4 * rows, 4 * side)


@torch.inference_mode()
def decode_prompts(dec, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                   multimask_output: bool, rows: int | None = None, iou_thresh: float | None = None
                   ) -> tuple[Tensor, Tensor]:
    """``MaskDecoder.forward`` for B prompts on one image.

    ``image_embeddings`` and ``image_pe``: (1, C, H, W); ``sparse``: (B, T, C) prompt tokens;
    ``dense``: (1 or B, C, H, W), the same for every prompt (no mask input). Returns low-res mask
    logits (B, 3 or 1, 4H, 4W) and predicted IoU (B, 3 or 1), as the stock decoder does; with
    ``rows``, only the top 4*rows rows of the logits (those over the image, not its padding).

    ``iou_thresh``: the caller keeps only masks whose predicted IoU is above it (the automatic
    generator's ``pred_iou_thresh``). The predicted IoU comes from the transformer alone, so a
    prompt none of whose masks is kept is not upscaled at all (the upscaling is most of the
    decoder's cost); its logits are returned as -inf, every mask the caller keeps is exact.
    """
    if dense.shape[0] > 1 and not torch.equal(dense[:1].expand_as(dense), dense):
        raise ValueError("decode_prompts: mask prompts differ between prompts; use the stock MaskDecoder")
    b = sparse.shape[0]
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
    _, c, h, w = image_embeddings.shape
    src = (image_embeddings + dense[:1]).flatten(2).transpose(1, 2)  # (1, N, C)
    pos = image_pe.flatten(2).transpose(1, 2)
    hs, keys = _transformer(dec.transformer, src, pos, tokens)
    sl = slice(1, None) if multimask_output else slice(0, 1)
    mask_tokens = hs[:, 1 : 1 + dec.num_mask_tokens][:, sl]
    first = sl.start or 0
    hyper = torch.stack([dec.output_hypernetworks_mlps[first + i](mask_tokens[:, i]) for i in range(mask_tokens.shape[1])],
                        dim=1)
    iou = dec.iou_prediction_head(hs[:, 0])[:, sl]
    side = h if rows is None else min(h, rows)
    if iou_thresh is None:
        return _upscale_masks(dec, keys, hyper, w, side), iou
    kept = (iou > iou_thresh).any(1).nonzero()[:, 0]
    masks = torch.full((b, hyper.shape[1], 4 * side, 4 * w), -math.inf, dtype=keys.dtype, device=keys.device)
    if len(kept):
        masks[kept] = _upscale_masks(dec, keys[kept], hyper[kept], w, side)
    return masks, iou
