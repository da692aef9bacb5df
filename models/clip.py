"""CLIP adapter over open_clip: load once, encode image batches and texts to unit vectors.

Weights are loaded the normal open_clip way: a ``pretrained`` tag (downloaded from the hub and
cached by open_clip), a local checkpoint file (``.pt``/``.bin``/``.safetensors``, loaded with
``weights_only=True`` by open_clip), or ``local-dir:/folder``. ``pretrained=None`` builds random
weights, seeded so every process gets the same model (embeddings are cached by model id).
A tag is looked up in the local cache first; when it is not there, one short probe of the hub
decides at once whether a download can work, so offline machines get one clear error line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, cast

import numpy as np
import torch

from coldstart.models import cnclip
from coldstart.models.errors import ConfigError, WeightsUnavailableError
from coldstart.models.hub import first_line as _first_line
from coldstart.models.hub import hub_offline as _hub_offline
from coldstart.models.hub import probe as _probe
from coldstart.models.quant import cast_products, has_bf16, has_int8_dot, quantize_int8

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("configs")
RANDOM_SEED = 0


@dataclass(frozen=True)
class ClipConfig:
    name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    device: str = "auto"
    # auto, fp32, fp16, bf16 or int8 (see resolve_precision). Embeddings are always float32; a
    # precision other than fp32 is part of the model id.
    precision: str = "auto"
    family: str = "open_clip"  # or cn_clip: Chinese-CLIP (models/cnclip.py)


def _uses_hf_text(name: str) -> bool:
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    return bool(cfg.get("text_cfg", {}).get("hf_model_name") or cfg.get("text_cfg", {}).get("hf_tokenizer_name"))


MULTILINGUAL_SETUP = ("multilingual open_clip models read text through Hugging Face `transformers`: install it with "
                      "`pip install 'coldstart[multilingual]'`. Their tokenizer files come from the hub; offline they "
                      "must already be in the local Hugging Face cache (HF_HOME, ~/.cache/huggingface) or the model "
                      "must be given as model.pretrained: local-dir:/folder with the tokenizer files inside")


class ClipModel(Protocol):
    """What the code that encodes needs of a CLIP model: a :class:`LoadedClip`, or a
    :class:`LazyClip` handle that builds one on first use. Annotate with this, so a stage can be
    handed the lazy handle and a model is only built when something is encoded."""

    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def preprocess(self) -> Callable: ...
    @property
    def tokenizer(self) -> Callable: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def model_id(self) -> str: ...
    @property
    def image_size(self) -> int: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def autocast_dtype(self) -> torch.dtype | None: ...
    @property
    def precision(self) -> str: ...
    @property
    def logit_scale(self) -> float: ...
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray: ...
    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray: ...


# open_clip's CLIP is untyped; torch types its methods, seen through nn.Module, as Tensor | Module.
_Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LoadedClip:
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
    precision: str = "fp32"  # what the image tower computes in: fp32, fp16, bf16 or int8

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the image tower on a GPU (None: fp32; on a CPU the weights
        themselves are cast, or quantised, at load: autocast there measured slower than fp32)."""
        return autocast_dtype(self.precision, self.device)

    @property
    def logit_scale(self) -> float:
        return float(cast(torch.Tensor, self.model.logit_scale).exp().item())

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.device, non_blocking=True)
        encode_image = cast(_Encode, self.model.encode_image)
        if self.autocast_dtype is None:  # fp32, int8, or bf16/fp16 products on a CPU (cast at load)
            feats = encode_image(pixels)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                feats = encode_image(pixels)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """``texts`` (N,) -> L2-normalised ``(N, D)`` float32."""
        encode = cast(_Encode, self.model.encode_text)
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            feats = encode(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def resolve_device(device: str, key: str = "model.device") -> torch.device:
    """``auto`` (CUDA when visible, else CPU) or a torch device name; ``key`` names the param in
    the error (model.device, regions.device)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"{key}: {device!r} is not a torch device (use auto, cpu, cuda, cuda:0)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {device!r} asked for, but no CUDA GPU is visible; use auto or cpu")
    return dev


def register_project_configs() -> None:
    import open_clip

    if "coldstart-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def _missing(pre: str, family: str = "open_clip") -> WeightsUnavailableError:
    """The error for a ``pretrained`` folder or checkpoint file that is not there."""
    if family == "cn_clip":
        return cnclip.missing_checkpoint(pre)
    if pre.startswith("local-dir:"):
        return WeightsUnavailableError(f"model.pretrained: folder {pre.removeprefix('local-dir:')} does not exist")
    return WeightsUnavailableError(
        f"model.pretrained: checkpoint file {pre} does not exist; give the path of a local open_clip checkpoint "
        f"(.pt/.bin/.safetensors), relative to the workspace or absolute")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def model_id_for(cfg: ClipConfig) -> str:
    """Stable id of (architecture, weights, precision): the embedding cache key. Cheap except for
    local files. fp32 adds nothing (ids from before precisions existed stay valid); any other
    precision is a suffix, ``ViT-B-32@laion2b_s34b_b79k:int8``, so embeddings computed at two
    precisions are never mixed in one store."""
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    family = "" if cfg.family == "open_clip" else f"{cfg.family}/"  # cn_clip/RN50@...: never open_clip's RN50
    return family + _weights_id(cfg) + ("" if precision == "fp32" else f":{precision}")


def _weights_id(cfg: ClipConfig) -> str:
    """``name@weights``: the architecture and which weights."""
    pre = cfg.pretrained
    if pre is None:
        return f"{cfg.name}@random-seed{RANDOM_SEED}"
    if cfg.family == "cn_clip" and pre == "official":
        return f"{cfg.name}@official"
    if pre.startswith("local-dir:"):
        folder = Path(pre.removeprefix("local-dir:"))
        if not folder.is_dir():
            raise _missing(pre)
        files = sorted(p for p in folder.glob("*") if p.is_file() and (
            p.suffix in {".bin", ".pt", ".pth", ".safetensors"} or p.name == "open_clip_config.json"))
        digest = hashlib.sha256("".join(_file_digest(p) for p in files).encode()).hexdigest()[:12]
        return f"{cfg.name}@dir-{digest}"
    if Path(pre).suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pre or cfg.family == "cn_clip":
        if not Path(pre).is_file():
            raise _missing(pre, cfg.family)
        return f"{cfg.name}@file-{_file_digest(Path(pre))}"
    return f"{cfg.name}@{pre}"


class LazyClip:
    """A ClipModel built on first use. Its ``model_id`` (the embedding cache key) is known
    without building it, so a round with nothing new to embed and cached text weights never
    imports open_clip's model code (1-2 s per round, and seconds more for a large model)."""

    # The built model's attributes, forwarded by __getattr__ (declared only, for the type checker:
    # a class attribute here would shadow the forwarding).
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: torch.device
    image_size: int
    embed_dim: int
    autocast_dtype: torch.dtype | None
    precision: str
    logit_scale: float

    def __init__(self, cfg: ClipConfig):
        self.cfg, self.model_id = cfg, model_id_for(cfg)
        self._model: LoadedClip | None = None

    def load(self) -> LoadedClip:
        if self._model is None:
            self._model = load_clip(self.cfg)
        return self._model

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        return self.load().encode_images(pixels)

    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        return self.load().encode_text(texts, batch_size)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle/introspection probes must not build the model
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __repr__(self) -> str:
        return f"LazyClip({self.model_id}, {'built' if self._model is not None else 'not built yet'})"


def load_clip(cfg: ClipConfig, *, fresh: bool = False) -> LoadedClip:
    """Build the model once per process (cached); raise a clear error when weights are missing.

    ``fresh=True`` builds a private copy, for code that changes the weights (fine-tuning).
    """
    return _load_clip_cached.__wrapped__(cfg) if fresh else _load_clip_cached(cfg)


@functools.lru_cache(maxsize=2)
def _load_clip_cached(cfg: ClipConfig) -> LoadedClip:
    """Check the settings (cheap, clear errors first), then build the model, its preprocessing and
    tokenizer. Cached because building takes seconds and every stage of a round asks for it."""
    import open_clip

    if cfg.family == "cn_clip":
        return _load_cn_clip(cfg)
    if cfg.family != "open_clip":
        raise ConfigError(f"model.family: {cfg.family!r}; valid: open_clip, cn_clip")
    register_project_configs()
    _check_architecture(cfg)
    device = resolve_device(cfg.device)
    pre = cfg.pretrained
    kind = _weights_kind(cfg.name, pre)
    model_id = model_id_for(cfg)
    _check_text_dependencies(cfg.name)
    src = None
    if kind == "tag":
        assert pre is not None  # _weights_kind calls pretrained=None "random"
        src = _reachable_tag_source(cfg.name, pre)
    torch.manual_seed(RANDOM_SEED)  # random weights must be identical in every process
    model, preprocess = _create_model(cfg, kind, src, device)
    model.eval()
    precision = _apply_precision(model, cfg, device)
    if pre is None:
        log.warning("model %s has RANDOM weights: zero-shot labels are meaningless", cfg.name)
    try:
        tokenizer = open_clip.get_tokenizer(pre if kind == "dir" else cfg.name)
    except (OSError, ValueError) as e:  # HF tokenizer files not in the cache, offline
        raise WeightsUnavailableError(f"the tokenizer of {cfg.name} could not be loaded ({e}); {MULTILINGUAL_SETUP}") from e
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return LoadedClip(model, preprocess, tokenizer, device, model_id, size, int(model.visual.output_dim), precision)


def _apply_precision(model: Any, cfg: ClipConfig, device: torch.device) -> str:
    """Quantise or cast ``model``'s image tower for ``cfg.precision``; returns the precision used.
    The image tower only: text is encoded once per ontology, in fp32."""
    precision = resolve_precision(cfg.precision, device)
    if precision == "int8":
        model.visual = quantize_int8(model.visual)
    elif precision in _CAST and device.type == "cpu":  # weights cast; the residual stream stays fp32
        cast_products(model.visual, _CAST[precision])
    return precision


def _load_cn_clip(cfg: ClipConfig) -> LoadedClip:
    """A Chinese-CLIP model (models/cnclip.py) as a LoadedClip: the same encode paths as open_clip's."""
    cnclip.check_name(cfg.name)
    device = resolve_device(cfg.device)
    model_id = model_id_for(cfg)
    torch.manual_seed(RANDOM_SEED)  # random weights must be identical in every process
    model, preprocess, tokenizer, size = cnclip.create(cfg.name, cfg.pretrained, device)
    precision = _apply_precision(model, cfg, device)
    if cfg.pretrained is None:
        log.warning("model %s (Chinese-CLIP) has RANDOM weights: zero-shot labels are meaningless", cfg.name)
    embed_dim = int(cast(torch.Tensor, model.text_projection).shape[1])
    return LoadedClip(model, preprocess, tokenizer, device, model_id, size, embed_dim, precision)


def _check_architecture(cfg: ClipConfig) -> None:
    """Refuse an unknown ``model.name`` before anything is loaded, with where to find valid names
    (open_clip's own error would come later, from deep inside model creation). A ``local-dir:``
    folder names its architecture in its own config, so the name is not checked then."""
    import open_clip

    local_dir = cfg.pretrained is not None and cfg.pretrained.startswith("local-dir:")
    if cfg.name not in open_clip.list_models() and not local_dir:
        raise ConfigError(
            f"model.name: unknown open_clip architecture {cfg.name!r} "
            f"(see `python -c 'import open_clip; print(open_clip.list_models())'`)"
        )


def _weights_kind(name: str, pre: str | None) -> str:
    """What ``model.pretrained`` is: random, dir, file or tag. Checked here, before open_clip runs,
    so a missing file or a mistyped tag is one clear error naming the setting, not a hub lookup
    that fails later (a string that is neither a path nor a known tag is refused)."""
    import open_clip

    if pre is None:
        return "random"
    if pre.startswith("local-dir:"):
        if not Path(pre.removeprefix("local-dir:")).is_dir():
            raise _missing(pre)
        return "dir"
    if Path(pre).suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pre:
        if not Path(pre).is_file():
            raise _missing(pre)
        return "file"
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pre not in tags:
        raise ConfigError(
            f"model.pretrained: {pre!r} is not a pretrained tag of {name}; "
            f"valid tags: {', '.join(tags) or '(none)'}; or give a local checkpoint path"
        )
    return "tag"


def _check_text_dependencies(name: str) -> None:
    """Multilingual models read text through `transformers`, an optional extra: say how to install
    it up front instead of failing with an ImportError from inside open_clip."""
    if _uses_hf_text(name):
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise WeightsUnavailableError(f"model.name {name}: {MULTILINGUAL_SETUP}") from None


def _reachable_tag_source(name: str, tag: str) -> _TagSource:
    """Where a pretrained tag's weights come from, refusing at once when they cannot be had.

    Decided before open_clip runs: offline, huggingface_hub retries each file 5 times with
    backoff (~45 s) and prints a warning per try. Cached weights load with the hub forced
    offline; otherwise one short probe tells whether a download can work at all."""
    src = _tag_source(name, tag)
    if src.cached is None and _hub_offline():
        raise WeightsUnavailableError(_weights_error(
            name, tag, src, f"not in the local cache, and HF_HUB_OFFLINE is set so {src.label} was not "
            f"contacted", f"the local cache ({src.looked_at})", "unset HF_HUB_OFFLINE, or "))
    if src.cached is None and (why := _probe(src.url)):
        raise WeightsUnavailableError(_weights_error(
            name, tag, src, f"not in the local cache and {src.label} is unreachable",
            f"the local cache ({src.looked_at}) and one probe of {src.url} ({why})"))
    return src


def _create_model(cfg: ClipConfig, kind: str, src: _TagSource | None, device: torch.device) -> tuple[Any, Callable]:
    """open_clip's model (untyped, hence Any) and image preprocessing. open_clip raises many kinds
    of errors (hub errors, RuntimeError on bad state dicts): each becomes one
    WeightsUnavailableError line saying what failed, what was tried and how to fix it."""
    import open_clip

    pre = cfg.pretrained
    try:
        with contextlib.nullcontext() if src is None else _quiet_hub(offline=src.cached is not None):
            # open_clip takes local-dir: as the model name (the folder's open_clip_config.json gives
            # the architecture, its checkpoint the weights), never as `pretrained`.
            name_or_dir, weights = (pre, None) if kind == "dir" else (cfg.name, pre)
            model, _, preprocess = open_clip.create_model_and_transforms(name_or_dir, pretrained=weights, device=device)
    except Exception as e:
        if src is not None and pre is not None:  # src: a tag's source, so pretrained is that tag
            cause, tried = ((f"the cached file did not load ({_first_line(e)})", f"the local cache ({src.cached})")
                            if src.cached else (f"the download from {src.label} failed ({_first_line(e)})",
                                                f"the local cache ({src.looked_at}) and {src.url} (reachable)"))
            raise WeightsUnavailableError(_weights_error(cfg.name, pre, src, cause, tried)) from e
        raise WeightsUnavailableError(f"could not load weights {pre} into {cfg.name}: {e}") from e
    return model, preprocess


@dataclass(frozen=True)
class _TagSource:
    """Where open_clip gets the weights of a pretrained tag, and whether they are already local."""

    cached: str | None  # the local file open_clip will load, None when it would have to download
    looked_at: str  # the cache location checked, for the error message
    url: str  # what a download contacts: the hub endpoint, or the checkpoint URL
    label: str  # human name of that source
    cache_root: str  # the folder to copy over from a machine with internet


def _tag_source(name: str, tag: str) -> _TagSource:
    """Mirror open_clip.pretrained.download_pretrained (3.3.0) without touching the network: an HF
    hub repo when the tag has one (its .safetensors twin is tried first), else a URL downloaded into
    ~/.cache/clip (every 3.3.0 tag has an hf_hub id, which open_clip prefers; older tags had URLs)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub

    pcfg = get_pretrained_cfg(name, tag)
    if pcfg.get("file"):
        return _TagSource(pcfg["file"], pcfg["file"], "", "a local file", os.path.dirname(pcfg["file"]))
    hub = pcfg.get("hf_hub", "") if has_hf_hub() else ""
    if hub:
        repo, filename = os.path.split(hub)  # 'org/model/' means the default file name
        filename = filename or HF_WEIGHTS_NAME
        names = ([HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME
                 else [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else [])
        names.append(filename)
        # try_to_load_from_cache returns a path, None, or a truthy "known missing" sentinel
        hit = next((p for f in names if isinstance(p := try_to_load_from_cache(repo, f), str)), None)
        folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
        return _TagSource(hit, f"{folder}: {' or '.join(names)}", constants.ENDPOINT, "the Hugging Face hub",
                          constants.HF_HUB_CACHE)
    url = pcfg.get("url", "")
    target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return _TagSource(target if os.path.isfile(target) else None, target, url, "the download host",
                      os.path.dirname(target))


@contextlib.contextmanager
def _quiet_hub(offline: bool):
    """Around open_clip's weight fetch: force huggingface_hub offline when the weights are cached
    (no HEAD calls, no retries), and hold back the hub's retry warnings, open_clip's own error log
    and Python warnings; a failure becomes one WeightsUnavailableError line that says it all."""
    from huggingface_hub import constants

    hub_log, root = logging.getLogger("huggingface_hub"), logging.getLogger()
    saved_offline, saved_level = constants.HF_HUB_OFFLINE, hub_log.level

    def not_open_clip_noise(record: logging.LogRecord) -> bool:  # open_clip logs on the root logger
        return record.levelno < logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname

    constants.HF_HUB_OFFLINE = saved_offline or offline  # process-wide, but only for this load
    hub_log.setLevel(logging.CRITICAL)
    root.addFilter(not_open_clip_noise)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        constants.HF_HUB_OFFLINE = saved_offline
        hub_log.setLevel(saved_level)
        root.removeFilter(not_open_clip_noise)


def _weights_error(name: str, tag: str, src: _TagSource, cause: str, tried: str, fix: str = "") -> str:
    """The one line the CLI prints: what failed, what was tried, how to fix it (keep '. Tried':
    `coldstart demo` shows the part before it)."""
    return (f"could not load pretrained weights {name}/{tag}: {cause}. Tried {tried}. Fix: {fix}set model.pretrained "
            f"in params.yaml to a local checkpoint file (.pt/.safetensors; one inside the workspace is versioned by "
            f"DVC, never by git) or local-dir:/folder, or on a machine "
            f"with internet run `python -c \"import open_clip; open_clip.create_model_and_transforms('{name}', "
            f"pretrained='{tag}')\"` and copy {src.cache_root} to the same place here").replace("\n", " ")


PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device, key: str = "model.precision") -> str:
    """The precision a setting means on a device. ``auto``: fp16 autocast on CUDA; on a CPU, bf16
    where it computes bf16 natively (AVX512_BF16, AMX), else int8 where it has int8 dot products
    (VNNI), else fp32. Measured (`coldstart bench precision`, BENCHMARKS.md): bf16 2-3.3x fp32
    with embeddings at cosine >= 0.9999, int8 2.2-2.8x at >= 0.9996; bf16 is the default where
    both run because its error is 5-6x smaller. On a CPU, fp16 and bf16 compute the image tower's
    linear layers and convolutions in that dtype and the rest in fp32 (models/quant.py,
    ``cast_products``; bf16 autocast measured 0.92x fp32). ``key`` names the setting in errors."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}: {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cpu":
            return "fp16"
        return "bf16" if has_bf16() else "int8" if has_int8_dot() else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ConfigError(f"{key}: int8 runs on the CPU (dynamic quantisation); on {device.type} use fp16 or bf16")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device: fp16/bf16 on a GPU; None on a CPU
    (fp32, int8, or weights cast at load)."""
    return None if device.type == "cpu" else _CAST.get(resolve_precision(precision, device))
