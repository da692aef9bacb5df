"""The demo's synthetic labeling task: scikit-learn's handwritten digits and a simulated annotator.

``coldstart demo`` (flows/demo.py), the benchmarks (coldstart/bench/) and the tests share it:

- ``DIGITS``, the ten class names, and ``demo_params``, a workspace's params.yaml that
  describes them in words (the ontology), with the demo's model, round and train settings;
- ``write_digits``: the 1,797 digits written as PNGs into a workspace's images folder, with no
  label in their names; it returns the truth (path -> class);
- ``answer_batch``: the simulated annotator. It fills in a round's review CSV from the truth,
  as a person would in a spreadsheet, and drops the file into the inbox.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

DEMO_PARAMS = """\
# The coldstart demo: scikit-learn's handwritten digits, ten classes described in words.
ontology:
  templates: {templates}
  classes:
{classes}
model:
  family: {family}
  name: {model}
  pretrained: {pretrained}
  device: auto
  precision: auto
  batch_size: 32
  num_workers: auto
views:
  clahe: false
  tiles: []
scan:
  max_pixels: 100000000
round:
  budget: {budget}
  audit_fraction: 0.1
  first_strategy: typiclust
  strategy: hybrid
  confidence_threshold: 0.7
  threshold_mode: fixed
  target_precision: 0.95
  seed: 0
train:
  seed: 0
  C: 1.0
  cv_folds: 5
  min_labels: 4
tracking:
  uri: null
  experiment: coldstart-demo
"""


ZH_DIGITS = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]


def demo_params(pretrained: str | None, budget: int, model: str = "ViT-B-32", family: str = "open_clip") -> str:
    """The demo workspace's params.yaml: the digits' ontology over ``model`` with ``pretrained``
    weights (None: random), review batches of ``budget`` images. With ``family`` cn_clip
    (Chinese-CLIP) the classes are described, and the templates written, in Chinese; the labels
    stay the English names the simulated annotator answers with."""
    if family == "cn_clip":
        templates = '["{}的照片。", "{}的扫描图。"]'
        classes = "\n".join(f'    {name}: ["数字{ZH_DIGITS[d]}", "手写的{d}", "数字{d}"]' for d, name in enumerate(DIGITS))
    else:
        templates = '["a photo of {}.", "a scan of {}."]'
        classes = "\n".join(f'    {name}: ["the digit {name}", "a handwritten {d}", "the number {d}"]'
                            for d, name in enumerate(DIGITS))
    return DEMO_PARAMS.format(classes=classes, pretrained="null" if pretrained is None else pretrained, budget=budget,
                              model=model, family=family, templates=templates)


def write_digits(images_dir: Path, n: int | None = None, size: int = 128) -> dict[str, str]:
    """Write the digits as ``size``x``size`` PNGs (dark ink on white); return path -> true class."""
    from sklearn.datasets import load_digits  # heavy (scikit-learn): only when images are written

    digits = load_digits()
    truth: dict[str, str] = {}
    count = len(digits.images) if n is None else min(n, len(digits.images))
    for k in range(count):
        pixels = (255 - digits.images[k] * (255.0 / 16.0)).astype(np.uint8)
        rel = f"scans-{k // 200:02d}/digit-{k:04d}.png"  # no label in the name
        (images_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC).save(images_dir / rel)
        truth[rel] = DIGITS[int(digits.target[k])]
    return truth


def answer_batch(review_csv: Path, truth: dict[str, str], inbox: Path, annotator: str = "sim-annotator") -> Path:
    """Fill in the review CSV's label column from the truth and drop it into the inbox."""
    with open(review_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), list(reader.fieldnames or [])
    for r in rows:
        r["label"], r["annotator"] = truth[r["image"]], annotator
    out = inbox / f"answers-{review_csv.stem}.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return out
