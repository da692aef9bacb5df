"""Chinese-CLIP adapter (``model.family: cn_clip``): OFA-Sys's ``cn_clip`` package behind the same
:class:`~coldstart.models.clip.LoadedClip` as open_clip, so every stage works unchanged.

The ``cn_clip`` wheel ships the BERT-Chinese vocabulary and every architecture's config, so the
tokenizer and the model code work offline; only the weights come from elsewhere:

- ``model.pretrained: official``: the model's published checkpoint (``clip_cn_rn50.pt``, ...),
  looked up in ``~/.cache/clip`` first, else downloaded from the Hugging Face hub (OFA-Sys) as
  ``cn_clip.clip.load_from_name`` does; offline, one error line says what to do;
- a local checkpoint file: Chinese-CLIP's training format ``{"state_dict": ...}`` (keys may carry
  DistributedDataParallel's ``module.`` prefix) or a bare state dict, loaded with
  ``weights_only=True``;
- ``null``: random weights, seeded (tests and smoke runs).

``cn_clip.clip.utils.create_model`` converts the weights to fp16 (``convert_weights``, for GPUs);
they are turned back to fp32 here, and ``model.precision`` applies after that as for open_clip.
Text is tokenized with ``cn_clip.clip.tokenize`` (context length 52, as Chinese-CLIP was trained).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Callable

import torch

from coldstart.models.errors import ConfigError, WeightsUnavailableError
from coldstart.models.hub import first_line, hub_offline, probe

INSTALL = "pip install 'coldstart[chinese]'"
CONTEXT_LENGTH = 52  # every Chinese-CLIP model was trained with it


def _package() -> Any:
    """``cn_clip.clip.utils``, or a ConfigError saying how to install it."""
    try:
        from cn_clip.clip import utils
    except ImportError as e:
        raise ConfigError(f"model.family: cn_clip needs the Chinese-CLIP package: {INSTALL} ({e})") from e
    return utils


def check_name(name: str) -> tuple[str, int]:
    """``model.name`` -> (cn_clip's ``vision@text`` structure, input resolution); ConfigError if unknown."""
    info = _package()._MODEL_INFO
    if name not in info:
        raise ConfigError(f"model.name: {name!r} is not a Chinese-CLIP model; with model.family: cn_clip use one of "
                          f"{', '.join(info)}")
    return info[name]["struct"], int(info[name]["input_resolution"])


def checkpoint_path(name: str, pretrained: str) -> Path:
    """The file ``model.pretrained`` names: a local checkpoint, or ``official``'s cached file
    (downloaded when reachable); WeightsUnavailableError with the fix otherwise."""
    if pretrained != "official":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise missing_checkpoint(pretrained)
        return path
    return _official(name)


def missing_checkpoint(pretrained: str) -> WeightsUnavailableError:
    """The error for a ``model.pretrained`` checkpoint file that is not there."""
    return WeightsUnavailableError(
        f"model.pretrained: checkpoint file {pretrained} does not exist; give the path of a Chinese-CLIP checkpoint "
        f"({{'state_dict': ...}} as Chinese-CLIP saves it, or a bare state dict), relative to the workspace or "
        f"absolute, or 'official' for the published weights")


def _official(name: str) -> Path:
    utils = _package()
    repo, filename = utils._MODELS[name]
    root = Path(os.path.expanduser("~/.cache/clip"))
    cached = root / filename
    if cached.is_file():
        return cached
    url = f"https://huggingface.co/OFA-Sys/{repo}"
    fix = (f"Fix: set model.pretrained to a local Chinese-CLIP checkpoint, or on a machine with internet run "
           f"`python -c \"import cn_clip.clip as c; c.load_from_name('{name}', download_root='{root}')\"` and copy "
           f"{cached} to the same place here")
    # "what failed. Tried ... Fix: ...": the shape of open_clip's message (the demo shows the first part)
    if hub_offline():
        raise WeightsUnavailableError(f"could not load Chinese-CLIP weights {name}/official: not in the local cache, "
                                      f"and HF_HUB_OFFLINE is set so the hub was not contacted. Tried {cached}. {fix}")
    if why := probe(url):
        raise WeightsUnavailableError(f"could not load Chinese-CLIP weights {name}/official: not in the local cache "
                                      f"and the Hugging Face hub is unreachable. Tried {cached} and one probe of {url} "
                                      f"({why}). {fix}")
    try:
        return Path(utils._download(name, str(root)))
    except Exception as e:
        raise WeightsUnavailableError(f"could not download Chinese-CLIP weights {name}/official ({first_line(e)}). "
                                      f"{fix}") from e


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A Chinese-CLIP checkpoint's state dict, ``module.`` prefixes and BERT's unused pooler removed."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and "unsupported global" errors all mean the same to a user
        raise WeightsUnavailableError(f"model.pretrained: {path} could not be read as a weights-only torch "
                                      f"checkpoint ({e})") from e
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise WeightsUnavailableError(f"model.pretrained: {path} holds no state dict (Chinese-CLIP saves "
                                      f"{{'state_dict': ...}})")
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if "bert.pooler" not in k}


class ChineseClip(torch.nn.Module):
    """Chinese-CLIP's model with the encode methods the rest of coldstart calls, and the same
    parameters (``visual``, ``bert``, ``text_projection``, ``logit_scale``: its state dict is a
    Chinese-CLIP checkpoint's). Unlike ``cn_clip``'s own ``CLIP``, which casts text features to
    the image tower's dtype, text stays fp32 whatever precision the image tower computes in."""

    visual: torch.nn.Module
    bert: torch.nn.Module
    text_projection: torch.nn.Parameter
    logit_scale: torch.nn.Parameter

    def __init__(self, clip: Any):
        super().__init__()
        self.visual, self.bert = clip.visual, clip.bert
        self.text_projection, self.logit_scale = clip.text_projection, clip.logit_scale
        self.pad_index = int(clip.tokenizer.vocab["[PAD]"])

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, D)`` image features (not normalised), in the tower's dtype."""
        dtype = next(p.dtype for p in self.visual.parameters() if p.is_floating_point())
        return self.visual(image.to(dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``(B, 52)`` token ids -> ``(B, D)`` text features (not normalised), fp32: Chinese-CLIP's
        own ``encode_text`` (the [CLS] state of BERT, projected)."""
        mask = text.ne(self.pad_index).to(self.text_projection.dtype)
        hidden: torch.Tensor = self.bert(text, attention_mask=mask)[0]
        return hidden[:, 0, :] @ self.text_projection


def create(name: str, pretrained: str | None, device: torch.device) -> tuple[torch.nn.Module, Callable, Callable, int]:
    """Build ``name`` with its weights, in fp32 on ``device``: (model, image preprocessing,
    tokenizer, input resolution). Random weights when ``pretrained`` is None (seed set by the caller)."""
    utils = _package()
    struct, resolution = check_name(name)
    sd = _state_dict(checkpoint_path(name, pretrained)) if pretrained is not None else None
    with contextlib.redirect_stdout(io.StringIO()):  # create_model prints its configs
        model = utils.create_model(struct)
    model.float()  # create_model converts to fp16 for GPUs: back to fp32 before the weights load
    if sd is not None:
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
        except RuntimeError as e:
            raise WeightsUnavailableError(f"model.pretrained: {pretrained} is not a Chinese-CLIP {name} checkpoint "
                                          f"(is model.name right?): {str(e)[:300]}") from e
    model = ChineseClip(model).to(device).eval()

    def tokenizer(texts: list[str]) -> torch.Tensor:
        return utils.tokenize(texts, context_length=CONTEXT_LENGTH)

    return model, utils.image_transform(resolution), tokenizer, resolution
