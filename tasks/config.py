"""params.yaml: the one config file, validated once on load.

Every section is a small pydantic model; each stage receives only its slice. Validation
errors are turned into :class:`ConfigError` messages that name the key (``round.budget``)
and what is allowed, because a person edits this file by hand.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coldstart.models.errors import ConfigError
from coldstart.tasks.commands import command
from coldstart.tasks.strategies import MEASURES, STRATEGIES  # the registries' names (numpy only: no heavy imports)


class _Section(BaseModel):
    # Unknown keys are typos far more often than intent: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


def template_set(name: str) -> list[str]:
    """Built-in prompt template sets, by name (open_clip's ImageNet templates)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    sets = {"imagenet80": OPENAI_IMAGENET_TEMPLATES, "simple7": SIMPLE_IMAGENET_TEMPLATES}
    if name == "plain":
        return ["a photo of {}."]
    if name == "zh":
        return list(ZH_TEMPLATES)
    if name not in sets:
        raise ValueError(f"unknown template set {name!r}; built-in sets: {', '.join(TEMPLATE_SETS)}, or give a list")
    return [t("{}") for t in sets[name]]


TEMPLATE_SETS = ("imagenet80", "simple7", "plain", "zh")

# `templates: zh`: photographs, in Chinese, for Chinese-CLIP. Chosen from the Chinese ImageNet
# templates Chinese-CLIP evaluates with (cn_clip/eval/imagenet_zeroshot_templates.py, translated
# from OpenAI's by the Wukong project), keeping those that describe a photograph of a thing and
# leaving out renderings, toys, tattoos and origami, which an inspection image never is.
ZH_TEMPLATES = ("{}的照片。", "一张{}的照片。", "{}的特写照片。", "{}的近距离照片。", "一张清晰的{}的照片。",
                "{}的裁剪照片。", "一张{}的明亮照片。", "{}的深色照片。", "{}的模糊照片。", "低分辨率的{}的照片。",
                "高质量的{}的照片。", "一张包含{}的照片。")


def _templates(value: Any) -> list[str]:
    templates = template_set(value) if isinstance(value, str) else value
    if not isinstance(templates, list) or not templates:
        raise ValueError("give a template set name (imagenet80, simple7, plain, zh) or a non-empty list of templates")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' where the description goes")
    return [unicodedata.normalize("NFC", t) for t in templates]


class ClassSpec(_Section):
    """One class: what the model reads (descriptions x templates) and how its label is stored."""

    descriptions: list[str] = Field(min_length=1)
    templates: list[str] | None = None  # None: the ontology's templates
    negative: bool = False  # a "nothing wrong" class: stored under ontology.negative_label

    @field_validator("descriptions")
    @classmethod
    def _non_empty(cls, descs: list[str]) -> list[str]:
        if not all(isinstance(d, str) and d.strip() for d in descs):
            raise ValueError("descriptions must be non-empty strings")
        return [unicodedata.normalize("NFC", d) for d in descs]

    @field_validator("templates", mode="before")
    @classmethod
    def _tpl(cls, value: Any) -> Any:
        return None if value is None else _templates(value)


# The answer "none of these": the image belongs to no written class. It is a label of its own
# (the last of ``OntologyConfig.labels``): the probe learns it as an outcome, the relabel stage
# gives it to images like those people answered so, and the discover stage clusters them into
# proposed classes. People may write it as any of UNKNOWN_ANSWERS; ``new:<name>`` answers
# "none of these" and proposes a class ``<name>`` (docs/answers.md).
UNKNOWN_LABEL = "unknown"
UNKNOWN_ANSWERS = ("unknown", "?", "none of these", "none")
NEW_CLASS_PREFIX = "new:"


class OntologyConfig(_Section):
    """Classes described in words, and prompt templates with one ``{}`` each.

    A class is either a list of descriptions or a mapping with ``descriptions``, optional
    ``templates`` (a list, or a set name) replacing the ontology's, and ``negative: true`` for
    classes such as "a flawless part" or "background": they are scored like any class, and all
    negatives are stored under ``negative_label``. *Scoring classes* are the classes as written
    (rows of the text-weight matrix); *labels* are what the label table stores.
    """

    templates: list[str] = Field(default_factory=lambda: ["a photo of {}."])
    negative_label: str = "ok"
    # Two classes whose text embeddings have a cosine above this are reported as confusable.
    confusable_threshold: float = Field(default=0.95, gt=0, le=1)
    classes: dict[str, ClassSpec]

    @field_validator("templates", mode="before")
    @classmethod
    def _tpl(cls, value: Any) -> list[str]:
        return _templates(value)

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, classes: Any) -> Any:
        if not isinstance(classes, dict) or len(classes) < 2:
            raise ValueError("give at least two classes, as a mapping: class name -> list of descriptions")
        out = {}
        for name, spec in classes.items():
            if isinstance(spec, str):
                spec = [spec]
            if isinstance(spec, list):
                spec = {"descriptions": spec}
            if not isinstance(spec, dict):
                raise ValueError(f"class {name!r}: give a list of descriptions or a mapping with 'descriptions'")
            # Labels are matched after NFC normalisation everywhere (docs/answers.md).
            name = unicodedata.normalize("NFC", str(name).strip())
            if name.casefold() in UNKNOWN_ANSWERS or name.casefold().startswith(NEW_CLASS_PREFIX):
                raise ValueError(f"class {name!r}: {', '.join(map(repr, UNKNOWN_ANSWERS))} and names starting with "
                                 f"{NEW_CLASS_PREFIX!r} are reserved for the answer 'none of these'; name the class "
                                 f"otherwise")
            out[name] = spec
        return out

    @model_validator(mode="after")
    def _labels_distinct(self) -> "OntologyConfig":
        has_negatives = any(spec.negative for spec in self.classes.values())
        if has_negatives and self.negative_label in self.classes and not self.classes[self.negative_label].negative:
            raise ValueError(f"negative_label {self.negative_label!r} is also a class that is not negative")
        return self

    @property
    def scoring_classes(self) -> list[str]:
        return list(self.classes)

    @property
    def class_names(self) -> list[str]:
        """The labels, in ontology order; all negative classes collapse into ``negative_label``."""
        labels: list[str] = []
        for name, spec in self.classes.items():
            label = self.negative_label if spec.negative else name
            if label not in labels:
                labels.append(label)
        return labels

    @property
    def labels(self) -> list[str]:
        """The label space of the heads and the resolved table: ``class_names``, then
        ``UNKNOWN_LABEL`` (none of these; probability 0 until people give that answer)."""
        return [*self.class_names, UNKNOWN_LABEL]

    @property
    def label_of_class(self) -> list[int]:
        """``(S,)`` index into ``class_names`` for each scoring class."""
        labels = self.class_names
        return [labels.index(self.negative_label if s.negative else n) for n, s in self.classes.items()]

    def prompts(self) -> list[list[str]]:
        """Per scoring class, every template x description prompt."""
        return [[t.format(d) for d in spec.descriptions for t in (spec.templates or self.templates)]
                for spec in self.classes.values()]


class ModelConfig(_Section):
    # open_clip, or cn_clip: Chinese-CLIP (pip install 'coldstart[chinese]'); then name is a
    # Chinese-CLIP model (RN50, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14) and pretrained is
    # 'official' (its published weights) or a local checkpoint.
    family: Literal["open_clip", "cn_clip"] = "open_clip"
    name: str = "ViT-B-32"
    # An open_clip pretrained tag, a path to a local checkpoint (relative to the workspace),
    # 'local-dir:/path', or null for random weights (tests, smoke runs).
    pretrained: str | None = "laion2b_s34b_b79k"
    device: str = "auto"
    # What the image tower computes in; embeddings are stored as float32 either way, and a
    # precision other than fp32 is part of the model id (changing it re-embeds, never mixes).
    # auto: fp16 autocast on CUDA; on a CPU bf16 where it is native (AVX512_BF16/AMX), else int8
    # where it has VNNI, else fp32 (`coldstart bench precision` compares them on this machine).
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    batch_size: int = Field(default=32, ge=1, le=4096)
    # DataLoader workers decoding images while the model computes; 'auto' picks by core count.
    num_workers: int | Literal["auto"] = "auto"


class TileSpec(_Section):
    # <= 1: a fraction of the image's shorter side; > 1: pixels. Tiles are square.
    size: float = Field(gt=0)
    stride: float = Field(gt=0)


class ViewsConfig(_Section):
    """What the model sees of each image: optional CLAHE, and optional sliding-window tiles."""

    clahe: bool = False  # contrast-limited adaptive histogram equalisation (faint defects)
    clahe_clip_limit: float = Field(default=2.0, gt=0)
    clahe_tiles: int = Field(default=8, ge=1, le=64)
    tiles: list[TileSpec] = Field(default_factory=list)
    aggregate: Literal["max", "mean", "topk"] = "max"  # per class, over the global view and the tiles
    topk: int = Field(default=3, ge=1)

    def key(self, kind: str) -> str:
        """Cache key of a view: 'global' or 'tiles-...', plus the preprocessing that changes pixels."""
        base = "global" if kind == "global" else "tiles-" + "_".join(f"{t.size:g}x{t.stride:g}" for t in self.tiles)
        return base + (f"-clahe{self.clahe_clip_limit:g}x{self.clahe_tiles}" if self.clahe else "")


class ScanConfig(_Section):
    # Decompression bombs: refuse images above this many pixels before decoding them. The one
    # pixel limit: Pillow's own (Image.MAX_IMAGE_PIXELS, 89.5 Mpx) does not apply on top of it.
    max_pixels: int = Field(default=100_000_000, ge=1)
    # Long side / short side. The model resizes the short side to ~224 px, so a 20000x1 strip
    # (144 bytes as PNG) would become 4.5e9 pixels; at 20:1 the worst case is 224*4480 = 1 Mpx,
    # and the centre crop still sees 1/20 of the image. Real panoramas are rarely over 12:1.
    max_aspect_ratio: float = Field(default=20.0, ge=1)
    # Checked from the file's size before it is read (the scan reads a new file whole to hash it).
    max_file_mb: float = Field(default=200.0, gt=0)
    # Pillow formats an image may have (by content, not extension). Never EPS/PS/PDF: Pillow
    # hands those to Ghostscript, an interpreter. Multi-picture JPEGs (MPO) come with JPEG.
    formats: list[str] = Field(default=["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"], validate_default=True)
    extensions: list[str] | None = None  # null: every file is tried (a wrong one is quarantined)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from PIL import Image

        Image.init()
        out = [f.strip().upper() for f in v]
        interpreted = sorted({f for f in out if f in ("EPS", "PS", "PDF")})
        if interpreted:
            raise ValueError(f"{', '.join(interpreted)} cannot be accepted: Pillow would run Ghostscript on them")
        unknown = [f for f in out if f not in Image.OPEN]
        if unknown or not out:
            raise ValueError(f"unknown image format(s) {unknown or '[]'}; Pillow reads: {', '.join(sorted(Image.OPEN))}")
        return out


class TrainConfig(_Section):
    seed: int = 0
    # auto: the best by cross-validation on the human labels among zero-shot, probe, zs-probe.
    model: Literal["auto", "zero-shot", "probe", "zs-probe"] = "auto"
    C: float = Field(default=1.0, gt=0)  # inverse L2 strength of the plain probe
    cv_folds: int = Field(default=5, ge=2)
    min_labels: int = Field(default=4, ge=2)  # fewer human labels than this: no probe is fitted
    # Self-training: label spreading gives unlabeled images with confidence >= this a pseudo-label
    # for training (null: off). Only when the pool has at most self_training_max_pool images.
    self_training: float | None = Field(default=0.9, gt=0, le=1)
    self_training_max_pool: int = Field(default=20000, ge=10)
    # At most this share of the images without a human label get a pseudo-label, the most confident.
    pseudo_share: float = Field(default=0.7, gt=0, le=1)
    # Keep only the pseudo-labels the head fitted with them agrees with, and fit it again on those.
    pseudo_agreement: bool = True


class StopConfig(_Section):
    """When is the dataset done? Any one criterion met is enough; null turns one off."""

    max_labels: int | None = Field(default=None, ge=1)  # the human-label budget
    # Labels have settled: fewer than this share changed in the last round, AND at most
    # max_below_threshold of the auto labels are below the auto-accept threshold (churn alone
    # can be low because little was asked, not because the labels are good).
    churn_below: float | None = Field(default=0.01, ge=0, le=1)
    max_below_threshold: float = Field(default=0.05, ge=0, le=1)
    # Done when the audited auto-label accuracy is at least this with 95% confidence: the
    # one-sided Clopper-Pearson 95% lower bound on the audit items, unweighted (tasks/audit.py).
    audit_lower_bound: float | None = Field(default=0.95, gt=0, le=1)


# round.review_policy presets: what share of each batch is the random audit.
# critical: every auto label goes to review (the whole pool, all of it a census audit).
REVIEW_POLICIES = {"spot-check": 0.1, "specialist": 0.3, "critical": 1.0}


class RoundConfig(_Section):
    """One round's review batch and auto-accept settings.

    ``review_policy`` presets, from practice: ``spot-check`` (10% of each batch a random audit),
    ``specialist`` (30%), ``critical`` (every auto label goes to review: the batch is every image
    without a human label, ``budget`` does not cap it, all of it audited, and no auto label is
    accepted), ``custom`` (``audit_fraction`` and the rest as written). A preset sets
    ``audit_fraction``; an ``audit_fraction`` that says otherwise is refused, not silently
    overridden.
    """

    budget: int = Field(default=50, ge=1)
    review_policy: Literal["custom", "spot-check", "specialist", "critical"] = "custom"
    audit_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    # How audit items are drawn: "uncertainty" (more often where the model is unsure, with known
    # probabilities, never 0) or "uniform" (every image alike). tasks/audit.py.
    audit_design: Literal["uncertainty", "uniform"] = "uncertainty"
    # The cold start (round 1: no labels, no trained model): typical, diverse images (TypiClust),
    # until there are cold_start_per_class human labels per class (0: round 1 only).
    first_strategy: str = "typiclust"
    cold_start_per_class: int = Field(default=3, ge=0)
    # Later rounds: uncertain *and* diverse (top hybrid_factor x budget by uncertainty, then k-center).
    strategy: str = "hybrid"
    uncertainty: str = "margin"  # the measure used by hybrid
    hybrid_factor: int = Field(default=3, ge=1)
    class_cap: float | None = Field(default=None, gt=0, le=1)  # at most this share of a batch per predicted class
    # Human labels the held-out model confidently disagrees with go back for a second look, at
    # most this share of the budget per round (on top of it).
    recheck_fraction: float = Field(default=0.1, ge=0, le=1)
    confidence_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    # Auto-accept threshold: "fixed" uses confidence_threshold; "precision" picks the lowest
    # confidence whose accepted labels reach target_precision on held-out human labels.
    threshold_mode: Literal["fixed", "precision"] = "fixed"
    target_precision: float = Field(default=0.95, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _policy(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.get("review_policy", "custom") not in REVIEW_POLICIES:
            return raw
        policy = raw["review_policy"]
        share = REVIEW_POLICIES[policy]
        given = raw.get("audit_fraction")
        if given is not None and not (isinstance(given, (int, float)) and abs(float(given) - share) < 1e-9):
            raise ValueError(f"audit_fraction {given} contradicts review_policy {policy} (which audits {share:.0%} "
                             f"of each batch): remove round.audit_fraction, or set review_policy: custom")
        return {**raw, "audit_fraction": share}

    @field_validator("strategy", "first_strategy")
    @classmethod
    def _known(cls, s: str) -> str:
        # Checked against the registry here, so a typo fails on load, not rounds later in select.
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; valid: {', '.join(STRATEGIES)}")
        return s

    @field_validator("uncertainty")
    @classmethod
    def _measure(cls, s: str) -> str:
        if s not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {s!r}; valid: {', '.join(MEASURES)}")
        return s


class TrackingConfig(_Section):
    uri: str | None = None  # null: sqlite:///<workspace>/mlflow.db
    experiment: str = "coldstart"
    registered_model: str | None = None  # Model Registry name of the head; null: "<experiment>-head"


class IntakeConfig(_Section):
    """What a problem in one row of an answer file costs: that row only (keep_good_rows, the
    default: the valid rows are merged, the bad ones written to data/inbox/rejected/NAME.rows.csv
    with a reason column, ready to fix and drop back), or the whole file (reject_file: nothing
    from it is merged; fix and drop it again). A file that cannot be read as answers at all (not
    CSV or an export, no label column, bad encoding) is rejected whole either way."""

    on_error: Literal["reject_file", "keep_good_rows"] = "keep_good_rows"
    # Bigger answer files are rejected unread ("split it"): parsing memory grows with the file,
    # and a review batch's answers are a few MB at most.
    max_file_mb: float = Field(default=50.0, gt=0)


class VersioningConfig(_Section):
    """What the version step keeps out of git: model checkpoints (by extension) and any file
    larger than ``git_max_file_mb`` go to DVC instead (`dvc add`, pushed like the data)."""

    git_max_file_mb: float = Field(default=10.0, gt=0)


class ExecutionConfig(_Section):
    """Where the work that grows with the image count runs: the embed and relabel stages' shards
    (4,096 images each). Results do not depend on it, so it is not a DVC parameter."""

    task_runner: Literal["local", "dask"] = "local"  # local: this process; dask: a Dask cluster
    # dask: the scheduler's address (tcp://host:8786); null starts a LocalCluster on this machine.
    dask_address: str | None = None
    dask_workers: int | None = Field(default=None, ge=1)  # the LocalCluster's worker processes; null: Dask's default


class RegionsConfig(_Section):
    """SAM regions: segment every object, label each mask with the round's labeler.

    The generator knobs keep segment-anything's ``SamAutomaticMaskGenerator`` names and meaning.
    The cleanup rules run after it, each counted in the round's record."""

    enabled: bool = False  # a `regions` stage in each round
    sam_type: Literal["vit_t", "vit_b", "vit_l", "vit_h"] = "vit_t"  # vit_t: MobileSAM (mobilesam-mirror)
    sam_checkpoint: str | None = None  # a local .pt/.pth state dict; null: random weights (tests only)
    device: str = "auto"
    # The image encoder's and mask decoder's precision (part of the SAM model id). auto: bf16 on
    # a CPU with AVX512_BF16/AMX (2x fp32 there, same masks), else fp32. Or fp32, fp16, bf16, int8.
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    # SamAutomaticMaskGenerator's knobs
    points_per_side: int = Field(default=16, ge=1, le=128)
    points_per_batch: int = Field(default=64, ge=1)
    pred_iou_thresh: float = Field(default=0.88, ge=0, le=1)
    stability_score_thresh: float = Field(default=0.95, ge=0, le=1)
    stability_score_offset: float = 1.0
    box_nms_thresh: float = Field(default=0.7, ge=0, le=1)
    crop_n_layers: int = Field(default=0, ge=0, le=3)
    crop_nms_thresh: float = Field(default=0.7, ge=0, le=1)
    crop_overlap_ratio: float = Field(default=512 / 1500, ge=0, lt=1)
    crop_n_points_downscale_factor: int = Field(default=1, ge=1)
    min_mask_region_area: int = Field(default=0, ge=0)
    # Prompt the point grid coarse to fine and skip a point that lies inside the smallest kept mask
    # of a point already prompted (not one of about the whole image): most points of a
    # segment-everything pass re-find an object another point found. false: every point, exactly
    # the stock generator.
    skip_covered_points: bool = True
    # over-segmentation cleanup
    mask_nms_thresh: float = Field(default=0.8, ge=0, le=1)  # drop a mask whose mask-IoU with a better one is above this
    containment_thresh: float = Field(default=0.95, ge=0, le=1)  # drop a mask this much inside a better one of the same label
    min_area: int = Field(default=64, ge=0)  # pixels, original resolution
    max_area_fraction: float = Field(default=0.95, gt=0, le=1)  # drop (near) whole-image masks
    one_mask_per_pixel: bool = False  # each pixel to its best mask only
    # labeling
    crop_padding: float = Field(default=0.1, ge=0, le=2)  # context around the mask's box, as a fraction of its size
    blank_outside: bool = False  # grey out the pixels outside the mask in the crop
    max_regions_per_image: int = Field(default=100, ge=1)
    # the loop
    review_budget: int = Field(default=20, ge=0)  # the least certain regions offered for review each round (0: none)
    sam_cache_gb: float = Field(default=2.0, ge=0)  # SAM image embeddings kept between rounds (.coldstart/cache/sam); 0: none


class LabelStudioConfig(_Section):
    """A Label Studio server for the review (`coldstart round --wait`, docs/labelstudio.md).
    The access token is read from the environment variable ``token_env``, never from here."""

    url: str | None = None  # e.g. http://localhost:8080; null: review through files only
    project: str | None = None  # the project's title; null: the workspace folder's name
    token_env: str = "LABEL_STUDIO_TOKEN"  # the env var holding a personal access token (or a legacy token)
    # How tasks point at images: Label Studio's local-files serving of the workspace's data/
    # folder, or signed URLs of `coldstart api` (api_url: its address as the annotators'
    # browsers reach it).
    images: Literal["local-files", "api"] = "local-files"
    api_url: str | None = None
    wait_answers: int | None = Field(default=None, ge=1)  # round --wait: answers to wait for; null: the whole batch
    wait_timeout_min: float = Field(default=60.0, gt=0)
    poll_s: float = Field(default=10.0, gt=0)  # round --wait: how often Label Studio's answers are fetched

    @model_validator(mode="after")
    def _api_url(self):
        if self.images == "api" and not self.api_url:
            raise ValueError("labelstudio.images: api needs labelstudio.api_url (the address of `coldstart api` "
                             "as the annotators' browsers reach it, e.g. http://labeling-host:8750)")
        return self


class ReportConfig(_Section):
    """The round report (data/reports/round-NNN.html)."""

    seconds_per_label: float = Field(default=30.0, gt=0)  # a person's time per answered image, for the effort figures
    target_accuracy: float = Field(default=0.95, gt=0, le=1)  # the auto-label accuracy the report measures against


class DiscoverConfig(_Section):
    """Proposed classes (the discover stage): clusters of the images that look unlike every class."""

    # Candidates: images answered "none of these", auto-labeled so, or whose best label's
    # probability is below this (0: none by confidence alone).
    max_confidence: float = Field(default=0.5, ge=0, le=1)
    min_size: int = Field(default=10, ge=2)  # members a cluster needs to be proposed
    # Members' mean cosine to their centre, the pool's mean taken off (on digits, a digit's
    # cluster has 0.41-0.73; `coldstart bench discover`).
    min_cohesion: float = Field(default=0.3, ge=-1, le=1)
    max_proposals: int = Field(default=4, ge=1, le=50)
    # A text file of candidate names, one per line, scored against each proposal's centre with
    # the model's text weights (with real weights only); null: ImageNet's class names (open_clip)
    # or Chinese-CLIP's Chinese ones.
    vocabulary: str | None = None
    thumbnails: int = Field(default=6, ge=0, le=24)  # most typical members shown per proposal in the report


class Params(_Section):
    ontology: OntologyConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    scan: ScanConfig = Field(default_factory=ScanConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    round: RoundConfig = Field(default_factory=RoundConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    versioning: VersioningConfig = Field(default_factory=VersioningConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    regions: RegionsConfig = Field(default_factory=RegionsConfig)
    labelstudio: LabelStudioConfig = Field(default_factory=LabelStudioConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    discover: DiscoverConfig = Field(default_factory=DiscoverConfig)


def _key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level (ontology:, model:, round:, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (typo?)"
            lines.append(f"  - {_key(err['loc'])}: {msg}")
        raise ConfigError(f"{source}: invalid settings:\n" + "\n".join(lines)) from None


def load_params(path: Path) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run `{command('coldstart')} init DIR` to create a workspace with an "
                          f"example")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid UTF-8 YAML: {e}") from e
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, str]:
    """Flatten to ``section.key`` -> string, for MLflow params (lists become JSON)."""
    import json

    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            flat[prefix] = json.dumps(value, ensure_ascii=False)
        else:
            flat[prefix] = "null" if value is None else str(value)

    walk("", params.model_dump())
    return flat
