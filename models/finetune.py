"""Fine-tune the last N vision blocks of a CLIP model with a linear head (a GPU job, usually).

Same interface as the probe: human labels in, a head out; plus the image tower's new weights,
saved as a complete open_clip ``.safetensors`` state dict. Pointing ``model.pretrained`` at
that file loads it the normal open_clip way, gives a new model id (the file's hash), and the
next round re-embeds every image with the fine-tuned tower: nothing else changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, cast

import numpy as np
import torch

from coldstart.models.clip import ClipModel
from coldstart.models.probe import LinearHead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    blocks: int = 2  # last transformer blocks of the vision tower to train (plus ln_post, proj)
    epochs: int = 3
    lr: float = 1e-5  # blocks; the head learns 10x faster
    weight_decay: float = 0.05
    batch_size: int = 32


def trainable_parameters(clip: ClipModel, blocks: int) -> list[torch.nn.Parameter]:
    """Freeze the whole model, then unfreeze the last ``blocks`` vision blocks, ln_post, proj."""
    # open_clip's towers are plain nn.Modules to the type checker: name what these attributes are.
    if clip.precision == "int8":  # quantised layers have no trainable weights
        raise ValueError(f"{clip.model_id}: fine-tuning needs the fp32 weights; load the model with precision fp32")
    visual = cast(torch.nn.Module, clip.model.visual)
    if not hasattr(visual, "transformer") or not hasattr(visual.transformer, "resblocks"):
        raise ValueError(f"{clip.model_id}: fine-tuning supports ViT image towers (no transformer.resblocks here)")
    resblocks = cast(torch.nn.ModuleList, cast(torch.nn.Module, visual.transformer).resblocks)
    n = len(resblocks)
    if not 1 <= blocks <= n:
        raise ValueError(f"blocks must be between 1 and {n} for {clip.model_id}, got {blocks}")
    for p in clip.model.parameters():
        p.requires_grad_(False)
    params = []
    for module in list(resblocks[n - blocks :]) + [cast(torch.nn.Module, visual.ln_post)]:
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.nn.Parameter):
        proj.requires_grad_(True)
        params.append(proj)
    return params


def finetune(clip: ClipModel, batches, head: LinearHead, cfg: FinetuneConfig) -> LinearHead:
    """Train in place. ``batches`` yields ``(pixels (B, 3, S, S), labels (B,) long)`` per step, for
    ``cfg.epochs`` passes (a re-iterable, e.g. a DataLoader). The head starts from ``head``
    (a probe or the zero-shot label weights); returns the trained head."""
    device = clip.device
    params = trainable_parameters(clip, cfg.blocks)
    L, D = head.weight.shape
    linear = torch.nn.Linear(D, L).to(device)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(head.weight))
        linear.bias.copy_(torch.from_numpy(np.where(np.isfinite(head.bias), head.bias, -30.0)))
    optim = torch.optim.AdamW([{"params": params, "lr": cfg.lr},
                               {"params": linear.parameters(), "lr": cfg.lr * 10}], weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    clip.model.train()
    encode_image = cast(Callable[[torch.Tensor], torch.Tensor], clip.model.encode_image)
    try:
        for epoch in range(cfg.epochs):
            total, count = 0.0, 0
            for pixels, labels in batches:
                pixels, labels = pixels.to(device), labels.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    feats = torch.nn.functional.normalize(encode_image(pixels), dim=-1)
                    loss = torch.nn.functional.cross_entropy(linear(feats.float()), labels)
                optim.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optim)
                scaler.update()
                total, count = total + float(loss) * len(labels), count + len(labels)
            log.info("fine-tune epoch %d: loss %.4f", epoch + 1, total / max(count, 1))
    finally:
        clip.model.eval()
        for p in clip.model.parameters():
            p.requires_grad_(False)
    return LinearHead(linear.weight.detach().cpu().numpy().astype(np.float32),
                      linear.bias.detach().cpu().numpy().astype(np.float32))


def save_weights(clip: ClipModel, path: Path) -> None:
    """The whole model's state dict as .safetensors (loadable by open_clip as ``pretrained=``)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in clip.model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
