"""SAM adapter: build a segment-anything ``Sam`` of one variant and load its weights safely.

All four variants come from one package, ``mobile_sam`` (``mobilesam-mirror``): it carries
segment-anything's own ``vit_b``/``vit_l``/``vit_h`` builders and MobileSAM's ``vit_t``, with the
same ``Sam`` module, ``SamPredictor`` and ``SamAutomaticMaskGenerator`` API. Both packages'
builders call a bare ``torch.load(f)`` (full pickle, no ``map_location``), so the model is built
without a checkpoint and the state dict is loaded here with ``weights_only=True`` onto the CPU.

``sam_checkpoint: null`` builds random weights, seeded so every process gets the same model
(image embeddings are cached by ``model_id``). Nothing is downloaded: a missing file is one error
that names the key and where the official weights are published.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from coldstart.models.clip import resolve_device, resolve_precision
from coldstart.models.errors import ConfigError, WeightsUnavailableError
from coldstart.models.quant import has_bf16, quantize_int8

log = logging.getLogger(__name__)

RANDOM_SEED = 0
# Where each variant's official weights are published (segment-anything's README; MobileSAM's repo).
WEIGHTS_URLS = {
    "vit_t": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}


class SamSettings(Protocol):
    """Which SAM to load (``regions.sam_type``, ``sam_checkpoint``, ``device`` in params.yaml)."""

    @property
    def sam_type(self) -> str: ...  # vit_t (MobileSAM), vit_b, vit_l, vit_h
    @property
    def sam_checkpoint(self) -> str | None: ...  # a local state dict; None: random weights (tests only)
    @property
    def device(self) -> str: ...  # auto, cpu, cuda, cuda:N
    @property
    def precision(self) -> str: ...  # auto, fp32, fp16, bf16, int8 (resolve_sam_precision)


class GeneratorSettings(Protocol):
    """The automatic mask generator's knobs, with segment-anything's ``SamAutomaticMaskGenerator``
    names and meaning (the ``regions.*`` keys of params.yaml)."""

    @property
    def points_per_side(self) -> int: ...
    @property
    def points_per_batch(self) -> int: ...
    @property
    def pred_iou_thresh(self) -> float: ...
    @property
    def stability_score_thresh(self) -> float: ...
    @property
    def stability_score_offset(self) -> float: ...
    @property
    def box_nms_thresh(self) -> float: ...
    @property
    def crop_n_layers(self) -> int: ...
    @property
    def crop_nms_thresh(self) -> float: ...
    @property
    def crop_overlap_ratio(self) -> float: ...
    @property
    def crop_n_points_downscale_factor(self) -> int: ...
    @property
    def min_mask_region_area(self) -> int: ...
    @property
    def skip_covered_points(self) -> bool: ...  # ours only: coarse to fine, no prompt inside a found object


class CleanupSettings(Protocol):
    """The over-segmentation cleanup rules run after the generator (masks.cleanup; the
    ``regions.*`` keys of params.yaml of the same names)."""

    @property
    def min_area(self) -> int: ...
    @property
    def max_area_fraction(self) -> float: ...
    @property
    def mask_nms_thresh(self) -> float: ...
    @property
    def containment_thresh(self) -> float: ...
    @property
    def one_mask_per_pixel(self) -> bool: ...
    @property
    def max_regions_per_image(self) -> int: ...


@dataclass
class SamModel:
    """A loaded SAM: the torch ``Sam`` module (eval mode, on ``device``) and its cache id.

    ``model_id`` is ``"<sam_type>@file-<sha256[:12]>"`` for a checkpoint or
    ``"<sam_type>@random-seed0"`` for random weights: the key of cached image embeddings.
    """

    model: Any  # mobile_sam.modeling.Sam
    device: torch.device
    model_id: str
    sam_type: str
    precision: str = "fp32"  # what the image encoder and the mask decoder compute in

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the image encoder takes and the mask decoder computes in (the prompt encoder
        stays fp32: point coordinates up to 1024 need more than bf16's 8 bits)."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    @property
    def image_size(self) -> int:
        """The encoder's square input side (1024 for every variant): the long side is resized to it."""
        return int(self.model.image_encoder.img_size)

    @property
    def mask_threshold(self) -> float:
        return float(self.model.mask_threshold)

    def stock_generator(self, cfg: GeneratorSettings) -> Any:
        """segment-anything's own ``SamAutomaticMaskGenerator`` over this model with ``cfg``'s knobs
        (COCO RLE output): the reference :func:`coldstart.models.masks.generate_masks` is checked against."""
        from mobile_sam import SamAutomaticMaskGenerator

        if self.precision != "fp32":
            raise ValueError(f"the stock generator runs SAM in fp32; this model is {self.precision} (load it with "
                             "precision fp32 to compare)")

        return SamAutomaticMaskGenerator(
            self.model, points_per_side=cfg.points_per_side, points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh, stability_score_thresh=cfg.stability_score_thresh,
            stability_score_offset=cfg.stability_score_offset, box_nms_thresh=cfg.box_nms_thresh,
            crop_n_layers=cfg.crop_n_layers, crop_nms_thresh=cfg.crop_nms_thresh,
            crop_overlap_ratio=cfg.crop_overlap_ratio,
            crop_n_points_downscale_factor=cfg.crop_n_points_downscale_factor,
            min_mask_region_area=cfg.min_mask_region_area, output_mode="coco_rle")


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime too: a vit_h file is 2.5 GB, hashed once per process, not per call.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _missing(cfg: SamSettings, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"regions.sam_checkpoint: {why}. Give the path of a local {cfg.sam_type} state dict; the official "
        f"weights are published at {WEIGHTS_URLS[cfg.sam_type]} (nothing is downloaded here)")


def _builder(sam_type: str):
    try:
        with warnings.catch_warnings():  # MobileSAM re-registers timm's tiny_vit names on import: harmless
            warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
            from mobile_sam import sam_model_registry
    except ImportError as e:  # the package itself, or timm, which it imports without declaring it
        raise ConfigError(f"regions.sam_type: {sam_type} needs the `mobilesam-mirror` package (module mobile_sam) "
                          f"and `timm`: pip install mobilesam-mirror timm ({e})") from e
    return sam_model_registry[sam_type]


def load_sam(cfg: SamSettings) -> SamModel:
    """Build ``cfg.sam_type`` and load ``cfg.sam_checkpoint`` (``weights_only=True``) onto ``cfg.device``.

    Raises :class:`WeightsUnavailableError` when the checkpoint is missing, unreadable or not a
    state dict of that variant; :class:`ConfigError` for a bad device or a missing package.
    """
    device = resolve_device(cfg.device, key="regions.device")
    build = _builder(cfg.sam_type)
    if cfg.sam_checkpoint is None:
        # Seed inside a forked RNG: the same random model in every process, and the caller's
        # global RNG state untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = build(checkpoint=None)
        model_id = f"{cfg.sam_type}@random-seed{RANDOM_SEED}"
        log.warning("regions: %s with random weights (regions.sam_checkpoint is null): masks are meaningless", cfg.sam_type)
    else:
        path = Path(cfg.sam_checkpoint).expanduser()
        if not path.is_file():
            raise _missing(cfg, f"{str(path)!r} does not exist or is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and "unsupported global" errors all mean the same to a user
            raise _missing(cfg, f"{str(path)!r} could not be read as a weights-only torch state dict ({e})") from e
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # training checkpoints wrap the state dict
        model = build(checkpoint=None)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise _missing(cfg, f"{str(path)!r} is not a {cfg.sam_type} state dict (is regions.sam_type right?): "
                                f"{str(e)[:300]}") from e
        stat = path.stat()
        model_id = f"{cfg.sam_type}@file-{_file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"
    model.eval().to(device)
    precision = resolve_sam_precision(cfg.precision, device)
    if precision == "int8":
        model.image_encoder = quantize_int8(model.image_encoder)  # the decoder reads its weights directly: fp32
    elif precision != "fp32":
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        model.image_encoder.to(dtype)
        model.mask_decoder.to(dtype)
    suffix = "" if precision == "fp32" else f":{precision}"
    return SamModel(model=model, device=device, model_id=model_id + suffix, sam_type=cfg.sam_type, precision=precision)


def resolve_sam_precision(precision: str, device: torch.device) -> str:
    """``regions.precision`` on a device. ``auto``: bf16 on a CPU with bf16 instructions
    (AVX512_BF16 or AMX; measured for vit_t: encoder 2.1x fp32 at cosine 0.9998, masks matched),
    fp32 elsewhere, GPUs included (not measured there yet). int8 (dynamic, the encoder's linear
    layers only) is allowed but measured worse here: 1.2x at cosine 0.993."""
    if precision == "auto":
        return "bf16" if device.type == "cpu" and has_bf16() else "fp32"
    return resolve_precision(precision, device, key="regions.precision")
