"""CLIP adapter over open_clip: load once, encode image batches and texts to unit vectors.

Weights are loaded the normal open_clip way: a ``pretrained`` tag (downloaded from the hub and
cached by open_clip), a local checkpoint file (``.pt``/``.bin``/``.safetensors``, loaded with
``weights_only=True`` by open_clip), or ``local-dir:/folder``. ``pretrained=None`` builds random
weights, seeded so every process gets the same model (embeddings are cached by model id).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from coldstart.models.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("configs")
RANDOM_SEED = 0


@dataclass(frozen=True)
class ClipConfig:
    name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    device: str = "auto"
    # auto: fp32 on CPU (bf16 autocast measured slower for ViT-B-32 on our 2-core CPU), fp16
    # autocast on CUDA. Embeddings are always returned as float32.
    precision: str = "auto"


def _uses_hf_text(name: str) -> bool:
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    return bool(cfg.get("text_cfg", {}).get("hf_model_name") or cfg.get("text_cfg", {}).get("hf_tokenizer_name"))


MULTILINGUAL_SETUP = ("multilingual open_clip models read text through Hugging Face `transformers`: install it with "
                      "`pip install 'coldstart[multilingual]'`. Their tokenizer files come from the hub; offline they "
                      "must already be in the local Hugging Face cache (HF_HOME, ~/.cache/huggingface) or the model "
                      "must be given as model.pretrained: local-dir:/folder with the tokenizer files inside")


@dataclass
class ClipModel:
    """A loaded open_clip model with its preprocessing and tokenizer.

    ``encode_images`` takes a float tensor ``(B, 3, S, S)`` already passed through
    ``preprocess`` and returns L2-normalised ``(B, D)`` float32 numpy embeddings.
    """

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: torch.device
    model_id: str
    image_size: int
    embed_dim: int
    autocast_dtype: torch.dtype | None = None  # None: plain fp32

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.device, non_blocking=True)
        if self.autocast_dtype is None:
            feats = self.model.encode_image(pixels)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                feats = self.model.encode_image(pixels)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """``texts`` (N,) -> L2-normalised ``(N, D)`` float32."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            feats = self.model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"model.device: {device!r} is not a torch device (use auto, cpu, cuda, cuda:0)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {device!r} asked for, but no CUDA GPU is visible; use auto or cpu")
    return dev


def register_project_configs() -> None:
    import open_clip

    if "coldstart-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def model_id_for(cfg: ClipConfig) -> str:
    """Stable id of (architecture, weights): the embedding cache key. Cheap except for local files."""
    pre = cfg.pretrained
    if pre is None:
        return f"{cfg.name}@random-seed{RANDOM_SEED}"
    if pre.startswith("local-dir:"):
        folder = Path(pre.removeprefix("local-dir:"))
        files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix in {".bin", ".pt", ".safetensors"})
        digest = hashlib.sha256("".join(_file_digest(p) for p in files).encode()).hexdigest()[:12]
        return f"{cfg.name}@dir-{digest}"
    if Path(pre).suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pre:
        return f"{cfg.name}@file-{_file_digest(Path(pre))}"
    return f"{cfg.name}@{pre}"


def load_clip(cfg: ClipConfig, *, fresh: bool = False) -> ClipModel:
    """Build the model once per process (cached); raise a clear error when weights are missing.

    ``fresh=True`` builds a private copy, for code that changes the weights (fine-tuning).
    """
    return _load_clip_cached.__wrapped__(cfg) if fresh else _load_clip_cached(cfg)


@functools.lru_cache(maxsize=2)
def _load_clip_cached(cfg: ClipConfig) -> ClipModel:
    import open_clip

    register_project_configs()
    if cfg.name not in open_clip.list_models():
        raise ConfigError(
            f"model.name: unknown open_clip architecture {cfg.name!r} "
            f"(see `python -c 'import open_clip; print(open_clip.list_models())'`)"
        )
    device = resolve_device(cfg.device)
    pre = cfg.pretrained
    kind = "random"
    if pre is not None:
        if pre.startswith("local-dir:"):
            kind = "dir"
            if not Path(pre.removeprefix("local-dir:")).is_dir():
                raise WeightsUnavailableError(f"model.pretrained: folder {pre.removeprefix('local-dir:')} does not exist")
        elif Path(pre).suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pre:
            kind = "file"
            if not Path(pre).is_file():
                raise WeightsUnavailableError(
                    f"model.pretrained: checkpoint file {pre} does not exist; give the path of a local "
                    f"open_clip checkpoint (.pt/.bin/.safetensors), relative to the workspace or absolute"
                )
        else:
            kind = "tag"
            tags = open_clip.list_pretrained_tags_by_model(cfg.name)
            if pre not in tags:
                raise ConfigError(
                    f"model.pretrained: {pre!r} is not a pretrained tag of {cfg.name}; "
                    f"valid tags: {', '.join(tags) or '(none)'}; or give a local checkpoint path"
                )
    model_id = model_id_for(cfg)
    if _uses_hf_text(cfg.name):
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise WeightsUnavailableError(f"model.name {cfg.name}: {MULTILINGUAL_SETUP}") from None
    torch.manual_seed(RANDOM_SEED)  # random weights must be identical in every process
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=pre, device=device)
    except Exception as e:  # open_clip raises many kinds: hub errors, RuntimeError on bad state dicts
        if kind == "tag":
            raise WeightsUnavailableError(
                f"could not load pretrained weights {cfg.name}/{pre} from the Hugging Face hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Tried the hub and the local "
                f"open_clip/HF cache. Fix: on a machine with internet, run `python -c \"import open_clip; "
                f"open_clip.create_model_and_transforms('{cfg.name}', pretrained='{pre}')\"` to fill the cache "
                f"(~/.cache/huggingface), or download the checkpoint file and set model.pretrained in params.yaml "
                f"to its local path (e.g. models/open_clip_model.safetensors)."
            ) from e
        raise WeightsUnavailableError(f"could not load weights {pre} into {cfg.name}: {e}") from e
    model.eval()
    if pre is None:
        log.warning("model %s has RANDOM weights: zero-shot labels are meaningless", cfg.name)
    try:
        tokenizer = open_clip.get_tokenizer(cfg.name)
    except (OSError, ValueError) as e:  # HF tokenizer files not in the cache, offline
        raise WeightsUnavailableError(f"the tokenizer of {cfg.name} could not be loaded ({e}); {MULTILINGUAL_SETUP}") from e
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipModel(model, preprocess, tokenizer, device, model_id, size, int(model.visual.output_dim),
                     autocast_dtype(cfg.precision, device))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None = fp32)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    choices = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in choices:
        raise ConfigError(f"model.precision: {precision!r}; valid: auto, fp32, fp16, bf16")
    return choices[precision]
