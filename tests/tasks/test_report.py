"""The round report's HTML, from report data built by hand: sections, escaping of any class name
and path, thumbnails that decode, defects drawn, the size bound, and the label economics."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from coldstart.tasks.report import render_report
from coldstart.tasks.reportdata import (
    CurvePoint,
    ReportData,
    Table,
    answer_times,
    economics,
    fit_curve,
    learning_curve,
    projection,
    report_settings,
)
from coldstart.tasks.reportpage import DEFECT_PX, SECTIONS
from coldstart.tasks.thumbs import THUMB_PX
from coldstart.tasks.workspace import Workspace
from tests.conftest import write_image

CHINESE = "划痕（表面缺陷）"
SCRIPT = "<script>alert('x')</script>"
CLASSES = ["ok", CHINESE, SCRIPT]
URI = re.compile(r'src="(data:image/jpeg;base64,([A-Za-z0-9+/=]+))"')


def mask_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_data(tmp_path, n=30, classes=CLASSES, **over) -> ReportData:
    """``n`` images (200x150 noise) under tmp_path/images, labeled round-robin; the first 6 human."""
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    paths = [f"part/img-{k:03d}.png" for k in range(n)]
    for k, p in enumerate(paths):
        if not (images / p).exists():
            write_image(images / p, seed=k, size=(150, 200))
    label = np.arange(n) % len(classes)
    human = np.arange(n) < 6
    conf = np.where(human, 1.0, rng.uniform(0.2, 0.99, n))
    location = ["4 4 40 30" if label[k] else "" for k in range(n)]
    table = Table(pa.array([f"{k:064x}" for k in range(n)]), pa.array(paths), pa.array(location), label, conf, human,
                  np.array([bool(x) for x in location]))
    batch = [{"image_id": f"{k:064x}", "image": paths[k], "purpose": "audit" if k == 7 else "hybrid",
              "predicted_label": classes[label[k]], "confidence": f"{conf[k]:.4f}", "note": "",
              "round": "3"} for k in range(6, 12)]
    flags = [{"image_id": f"{1:064x}", "human_label": classes[1], "suggested_label": classes[2],
              "probability": "0.8123", "round": "2"}]
    mask = np.zeros((150, 200), bool)
    mask[10:20, 12:30] = True
    data = dict(
        round=3, workspace="ws<1>", classes=list(classes), table=table, threshold=0.7, model="zs-probe",
        record={"round": 3, "intake": {"events_added": 4, "human_labels": 6}, "relabel": {"churn": 0.05}},
        quarantine=[{"path": "bad/<empty>.jpg", "reason": "empty file & more", "round": "1"}],
        humans={f"{k:064x}": classes[label[k]] for k in range(6)},
        audit=None, curve=[CurvePoint(1, 0, 0.5, 0.3, 0.7, 10), CurvePoint(2, 20, 0.7, 0.5, 0.85, 10)],
        batch=batch, flags=flags,
        train={"model": "zs-probe", "confusion": [[2, 0, 0], [1, 1, 0], [0, 1, 1]], "temperature": 1.7,
               "ece_before": 0.2, "ece_after": 0.05},
        reliability=[(0.9, True), (0.85, True), (0.4, False), (0.45, True)],
        defects={f"{k:064x}": {"rle": mask_rle(mask), "bbox": (12, 10, 18, 10), "label": classes[label[k]]}
                 for k in range(n) if label[k] == 1},
        defect_labels=list(classes[1:]), lead_times={}, lead_labels=0, seconds_per_label=30.0, target_accuracy=0.95)
    data.update(over)
    return ReportData(**data)


def audit(by_label: dict[str, list[int]]):
    from coldstart.tasks.reportdata import Audit

    c = sum(v[0] for v in by_label.values())
    n = sum(v[1] for v in by_label.values())
    return Audit.of({"round": 2, "n": n, "correct": c, "by_label": by_label})


def test_a_weighted_audit_shows_the_bands_it_rests_on(tmp_path):
    from coldstart.tasks.reportdata import Audit

    au = Audit.of({"round": 3, "n": 40, "correct": 36, "by_label": {"ok": [36, 40]}, "method": "out-of-fold",
                   "drawn_in": [1, 2], "weighted": [0.97, 0.94, 0.99], "auto_labels": 900,
                   "bands": [[0.0, 0.9, 100, 20.0, 20, 4.0, 3], [0.9, 1.0, 800, 8.0, 20, 0.5, 1]]})
    assert (au.accuracy, au.interval, au.n) == (0.97, (0.94, 0.99), 40)
    page, _ = render_report(make_data(tmp_path, audit=au), tmp_path / "images")
    section = page.split('<section id="accuracy">')[1].split("</section>")[0]
    # A record from before the difference estimator (no "estimator" key) says how it was weighted.
    assert "<b>97.0%</b>estimated accuracy" in section and "36/40 right, weighted by confidence band" in section
    assert "Where the errors are" in section
    assert "<td>0.9–1</td>" in section and '<td class="n">800</td>' in section and '<td class="n">0.5</td>' in section
    au = Audit.of({"round": 3, "n": 40, "correct": 36, "by_label": {"ok": [36, 40]}, "method": "out-of-fold",
                   "drawn_in": [1, 2], "weighted": [0.97, 0.94, 0.99], "auto_labels": 900, "estimator": "difference",
                   "bands": [[0.0, 1.0, 900, 28.0, 40, 4.5, 4]]})
    page, _ = render_report(make_data(tmp_path, audit=au), tmp_path / "images")
    section = page.split('<section id="accuracy">')[1].split("</section>")[0]
    assert "36/40 right, difference estimator (the model&#x27;s confidence corrected by the audit" in section


def thumbs_of(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m.group(2)))) for m in URI.finditer(page)]


def test_every_section_is_there_with_its_numbers(tmp_path):
    data = make_data(tmp_path, audit=audit({"ok": [4, 5], CHINESE: [3, 5]}))
    page, thumbs = render_report(data, tmp_path / "images")
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{html.escape(title)}</h2>' in page
    assert "70.0%" in page and "n=10" not in page.split('id="accuracy"')[0]  # 7 of 10 audited, shown as such
    assert "<b>10</b>audited (n)" in page
    assert "Clopper-Pearson" in page or "Wilson" in page
    # the confusion matrix as an HTML table, the learning curve and reliability diagram as inline SVG, text as text
    assert 'class="cm"' in page and page.count("<svg") == 2 and "<text" in page
    assert "ECE before temperature scaling" in page and "20.0%" in page and "5.0%" in page and "1.70" in page
    assert thumbs.count > 0 and thumbs.left_out == 0


def test_class_names_and_paths_are_text_never_markup(tmp_path):
    """A Chinese class name is kept as is (UTF-8 text, no glyphs drawn); a class named like a
    script tag, and paths and reasons with markup characters, are escaped everywhere."""
    data = make_data(tmp_path, audit=audit({SCRIPT: [1, 2], CHINESE: [2, 2]}))
    page, _ = render_report(data, tmp_path / "images")
    assert '<meta charset="utf-8">' in page and CHINESE in page
    assert "<script" not in page.lower()  # not the class name, and no script of the page's own
    assert html.escape(SCRIPT) in page
    assert f'data-label="{html.escape(SCRIPT)}"' in page and f'data-label="{CHINESE}"' in page
    assert "bad/&lt;empty&gt;.jpg" in page and "empty file &amp; more" in page
    assert "ws&lt;1&gt;" in page
    # no network: nothing is loaded from anywhere but the page itself
    assert "default-src 'none'; img-src data:" in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_thumbnails_are_small_jpegs_that_decode(tmp_path):
    data = make_data(tmp_path)
    page, thumbs = render_report(data, tmp_path / "images")
    images = thumbs_of(page)
    assert len(images) == thumbs.count > 10
    for img in images:
        img.load()
        assert img.format == "JPEG" and max(img.size) <= DEFECT_PX
    sizes = sorted({max(i.size) for i in images})
    assert sizes[0] <= THUMB_PX and max(sizes) == DEFECT_PX  # defects are drawn larger
    # a defect image has its box (yellow) and mask (red) drawn on it
    defect = next(i for i in images if max(i.size) == DEFECT_PX).convert("RGB")
    px = np.asarray(defect).reshape(-1, 3).astype(int)
    assert ((px[:, 0] > 180) & (px[:, 1] > 150) & (px[:, 2] < 90)).any()  # the box's yellow
    assert "located defects" in page and "mask" in page


def test_a_missing_image_gives_no_preview_and_the_page_goes_on(tmp_path):
    data = make_data(tmp_path)
    (tmp_path / "images/part/img-008.png").unlink()
    (tmp_path / "images/part/img-009.png").write_bytes(b"not an image")
    page, thumbs = render_report(data, tmp_path / "images")
    assert thumbs.left_out >= 2 and page.count('class="nothumb"') >= 2
    assert "thumbnail(s) not shown" in page


def test_a_large_workspace_gives_a_small_file(tmp_path):
    """300 labels, 30,000 images, 900 distinct noise images (the worst case for JPEG): the
    thumbnails stop at their byte cap, the sections at their row caps; the file stays < 3 MB."""
    classes = [f"类别-{k}" for k in range(300)]
    data = make_data(tmp_path, n=900, classes=classes)
    n = 30_000
    k = np.arange(n)
    big = Table(pa.array([f"{i:064x}" for i in k]), pa.array([f"part/img-{i % 900:03d}.png" for i in k]),
                pa.array([""] * n), k % 300, np.random.default_rng(1).uniform(0.1, 1, n), k < 500, np.zeros(n, bool))
    batch = [dict(data.batch[0], image=f"part/img-{i:03d}.png", predicted_label=classes[i % 300]) for i in range(400)]
    flags = [dict(data.flags[0], image_id=f"{i:064x}", human_label=classes[i % 300]) for i in range(500)]
    quarantine = [{"path": f"bad/{i}.jpg", "reason": "empty file", "round": "1"} for i in range(5000)]
    cm = (np.eye(300, dtype=int) * 3 + (np.arange(300)[:, None] == (np.arange(300)[None, :] + 1) % 300)).tolist()
    data = make_data(tmp_path, n=900, classes=classes, table=big, batch=batch, flags=flags, quarantine=quarantine,
                     train=dict(data.train, confusion=cm), defects={}, defect_labels=[],
                     audit=audit({c: [3, 4] for c in classes}))
    page, thumbs = render_report(data, tmp_path / "images")
    size = len(page.encode("utf-8"))
    assert size < 3_000_000, size
    assert thumbs.left_out > 0 and thumbs.count > 100  # the cap was reached, not skipped
    assert "… and 4950 more" in page and "Most confused pairs" in page and "the 150 most frequent" in page
    for img in thumbs_of(page)[:20]:
        img.load()


def test_label_economics_take_label_studio_lead_time_else_the_default_rate(tmp_path):
    ws = Workspace(tmp_path)
    ws.imported.mkdir(parents=True)
    # a spooled webhook annotation (by its key) and a Label Studio JSON export (by annotation id)
    (ws.imported / "0001-aa.json").write_text(json.dumps(
        {"action": "ANNOTATION_CREATED", "key": "k1", "annotation": {"id": 11, "lead_time": 12.5}, "task": {}}))
    (ws.imported / "export.json").write_text(json.dumps(
        [{"id": 5, "annotations": [{"id": 12, "lead_time": 7.5}, {"id": 13, "lead_time": "x"}]}]))
    ev = [SimpleNamespace(source_file="label-studio:annotation/11", source_sha256="k1"),
          SimpleNamespace(source_file="label-studio:annotation/12", source_sha256="zz"),
          SimpleNamespace(source_file="label-studio:annotation/12", source_sha256="zz"),  # two images, one annotation
          SimpleNamespace(source_file="label-studio:annotation/13", source_sha256="zz"),  # no usable lead_time
          SimpleNamespace(source_file="data/inbox/answers.csv", source_sha256="cc")]
    times, timed = answer_times(ws, {str(i): e for i, e in enumerate(ev)})
    assert times == {"11": 12.5, "12": 7.5} and timed == 3
    data = make_data(tmp_path, lead_times=times, lead_labels=timed)  # 6 human labels, 30 images
    e = economics(data)
    assert e["human"] == 6 and e["measured_labels"] == 3 and e["assumed_labels"] == 3
    assert e["human_seconds"] == pytest.approx(20 + 3 * 30)
    assert e["rate"] == pytest.approx(110 / 6) and e["all_seconds"] == pytest.approx(30 * 110 / 6)
    assert e["saved_seconds"] == pytest.approx(24 * 110 / 6)
    page, _ = render_report(data, tmp_path / "images")
    assert "3 of them timed by Label Studio" in page and "report.seconds_per_label = 30 s" in page
    plain, _ = render_report(make_data(tmp_path), tmp_path / "images")
    assert "report.seconds_per_label = 30 s each (no Label Studio lead_time" in plain


def test_report_settings_default_until_params_have_a_report_section():
    assert report_settings(SimpleNamespace()) == (30.0, 0.95)
    section = SimpleNamespace(seconds_per_label=12, target_accuracy=0.9)
    assert report_settings(SimpleNamespace(report=section)) == (12.0, 0.9)


def test_the_projection_follows_the_learning_curve():
    # error = 2 / sqrt(labels): 95% needs (2 / 0.05)^2 = 1600 labels
    pts = [CurvePoint(r, n, 1 - 2 / np.sqrt(n), 0, 1, 100) for r, n in enumerate((16, 64, 256), start=1)]
    a, b = fit_curve(pts)
    assert b == pytest.approx(-0.5, abs=1e-6)
    need, words = projection(pts, 0.95)
    assert need == pytest.approx(1600, rel=1e-3) and ("1,600" in words or "1,601" in words)
    assert projection(pts[:1], 0.95)[0] is None  # one label count: nothing to extrapolate
    worse = [CurvePoint(1, 10, 0.8, 0.7, 0.9, 50), CurvePoint(2, 20, 0.7, 0.6, 0.8, 50)]
    assert fit_curve(worse) is None and "not projectable" in projection(worse, 0.95)[1]
    done = [CurvePoint(1, 10, 0.99, 0.96, 1.0, 200)]
    assert projection(done, 0.95) == (10, "reached: round 1's interval is above it with 10")


def test_the_learning_curve_takes_each_rounds_newest_estimate():
    rec = {1: {"intake": {"human_labels": 0}, "audit": None},
           2: {"intake": {"human_labels": 8}, "audit": {"round": 1, "n": 2, "correct": 1, "by_label": {}}},
           3: {"intake": {"human_labels": 16}, "audit": {"round": 1, "n": 4, "correct": 3, "by_label": {}}},
           4: {"intake": {"human_labels": 24}, "audit": {"round": 4, "n": 9, "correct": 9, "by_label": {}}}}
    pts = learning_curve(rec)
    assert [(p.audited_round, p.human_labels, p.n, p.accuracy) for p in pts] == [(1, 0, 4, 0.75), (4, 24, 9, 1.0)]
    assert all(0 <= p.low <= p.accuracy <= p.high <= 1 for p in pts)
