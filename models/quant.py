"""Reduced precision on a CPU: dynamic int8 quantisation of a model's linear layers.

Dynamic quantisation (``torch.ao.quantization.quantize_dynamic``) stores each ``nn.Linear``'s
weights as int8 (per output channel) and quantises its input per call from the input's own
range, so no calibration data is needed and every image is treated the same way. On an x86 CPU
with VNNI (int8 dot products) a linear layer then runs 3-4x faster than in fp32.

``quantize_dynamic`` only replaces modules that are exactly ``nn.Linear``. The projections of
``nn.MultiheadAttention`` (a packed ``in_proj_weight`` and a ``NonDynamicallyQuantizableLinear``)
are not, and they are a third of a ViT's multiply-adds: :func:`unpack_attention` first rewrites
each self-attention module as :class:`PackedSelfAttention` (the same function over plain
``nn.Linear`` layers and ``scaled_dot_product_attention``), so they are quantised too.
Convolutions (a ViT's patch embedding, a ResNet's stem) stay fp32, and so do the linear layers
of a CLIP ResNet's attention pooling, whose weights it reads directly.

Measured on the 2-core AMD EPYC with AVX512_VNNI (BENCHMARKS.md, `coldstart bench precision`):
ViT-B-32's image tower 2x+ fp32's throughput with embeddings at cosine >= 0.999 of fp32's.

bf16 (and fp16) on a CPU: :func:`cast_products` stores the weights of the linear layers and
convolutions in the low precision and computes only those products in it; everything between
them (the residual stream, layer and batch norms, softmax) stays fp32. Casting the whole tower
instead rounds the residual stream to 8 bits of mantissa at every block: on ViT-B-32 its error
was 2.7x larger (median 0.24 against 0.09 of the distance to the nearest other image) for a
speed 1.5x higher on an AMX CPU (5.3 against 8.0 ms/img, fp32 24.7).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PackedSelfAttention(nn.Module):
    """``nn.MultiheadAttention(batch_first=...)`` for self-attention, over plain ``nn.Linear``
    layers (so dynamic quantisation reaches them). Same weights, same outputs up to rounding.

    Called as the original: ``forward(query, key, value, need_weights=False, attn_mask=None)``
    with query ``(B, L, D)`` (``batch_first``) or ``(L, B, D)``; returns ``(out, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        d = mha.embed_dim
        self.num_heads, self.batch_first, self.dropout = mha.num_heads, mha.batch_first, mha.dropout
        self.in_proj = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
        self.in_proj.weight = nn.Parameter(mha.in_proj_weight.detach().clone())
        if mha.in_proj_bias is not None:
            self.in_proj.bias = nn.Parameter(mha.in_proj_bias.detach().clone())
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool = False,
                attn_mask: Tensor | None = None) -> tuple[Tensor, None]:
        if key is not query or value is not query:
            raise ValueError("PackedSelfAttention computes self-attention only (query, key and value the same tensor)")
        x = query if self.batch_first else query.transpose(0, 1)
        b, length, d = x.shape
        q, k, v = self.in_proj(x).reshape(b, length, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, L, d/h)
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def unpack_attention(module: nn.Module) -> int:
    """Replace, in place, every self-attention ``nn.MultiheadAttention`` in ``module`` (same
    embedding size for keys and values) by a :class:`PackedSelfAttention`; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim:
            setattr(module, name, PackedSelfAttention(child))
            count += 1
        else:
            count += unpack_attention(child)
    return count


def quantize_int8(module: nn.Module) -> nn.Module:
    """``module`` (eval mode, on the CPU) with its linear layers, attention's included, dynamically
    quantised to int8. Changes ``module`` in place (attention unpacked) and returns the quantised
    module, which shares nothing trainable with it: use the result for inference only."""
    if next(module.parameters()).device.type != "cpu":
        raise ValueError("int8 quantisation runs on the CPU; use fp16 or bf16 on a GPU")
    _use_x86_engine()
    unpack_attention(module)
    with warnings.catch_warnings():  # torch announces the move of eager quantisation to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.* deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(module, _quantizable(module), dtype=torch.qint8)


class LowPrecisionProduct(nn.Module):
    """An ``nn.Linear`` or ``nn.Conv2d`` whose weights are stored in ``dtype`` (bf16 or fp16):
    the input is rounded to ``dtype``, the product computed in it (accumulated in fp32 by the CPU
    kernels), and the output returned in the input's dtype."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, dtype: torch.dtype):
        super().__init__()
        self.layer = layer.to(dtype)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.to(self.dtype)).to(x.dtype)


def cast_products(module: nn.Module, dtype: torch.dtype) -> int:
    """Wrap, in place, every linear layer (attention's included, see :func:`unpack_attention`)
    and 2-D convolution of ``module`` as a :class:`LowPrecisionProduct` in ``dtype``, except
    layers whose weights their parent reads directly and ``module``'s own convolutions (a ViT's
    patch embedding, a ResNet's stem: CLIP code reads ``conv1.weight.dtype`` to cast its input);
    returns how many were wrapped."""
    unpack_attention(module)
    names = _quantizable(module) | {name for name, m in module.named_modules() if type(m) is nn.Conv2d and "." in name}
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, child, LowPrecisionProduct(getattr(owner, child), dtype))
    return len(names)


# Modules that read their linear layers' weights directly (CLIP ResNets' attention pooling calls
# F.multi_head_attention_forward with q_proj.weight ...): a quantised layer has no such tensor.
_READ_DIRECTLY = ("AttentionPool2d",)


def _quantizable(module: nn.Module) -> set[str]:
    """The names of the ``nn.Linear`` layers of ``module`` that can be quantised."""
    skip = {f"{name}.{child}" if name else child for name, m in module.named_modules()
            if type(m).__name__ in _READ_DIRECTLY for child, _ in m.named_children()}
    return {name for name, m in module.named_modules() if type(m) is nn.Linear and name not in skip}


def _use_x86_engine() -> None:
    """The quantised kernels' engine: torch picks x86 (fbgemm with onednn) where it has it."""
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            return


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(the CPU's model name, its feature flags) from /proc/cpuinfo (Linux); empty where it
    cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", ""), frozenset((fields.get("flags") or fields.get("Features") or "").split())


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx512_bf16, avx512_vnni, ...); empty where they cannot be read."""
    return _cpuinfo()[1]


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it ("" where it cannot be read)."""
    return _cpuinfo()[0]


def has_int8_dot() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512_VNNI, AVX_VNNI or AMX_INT8), the
    ones that make int8 measurably faster than fp32 here."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX_BF16): there bf16 weights run a
    ViT 2-3x faster than fp32; elsewhere bf16 is emulated and slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
