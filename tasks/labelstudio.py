"""Label Studio formats, both ways, in one place.

Export: review items become Label Studio tasks (``tasks.json``) with the model's label as a
pre-annotation, plus the project's labeling config (``label_config.xml``: one image, one
single-choice control, and for region pre-annotations a polygon control). Import: a Label
Studio JSON export of those tasks becomes rows of (image, label, annotator) for intake to
validate like a CSV, and one row per polygon a person kept, edited or drew (a region answer,
which intake matches to the proposed regions).

The control names, the data key and the local-files prefix below are used by both directions,
so what is exported is what the import reads back. No files are read or written here.

Also the checks a live review needs before a round starts (``preflight``: the project title Label
Studio will accept, the server reachable, the token valid), and ``Annotators``: a Label Studio
user id -> that person's email, for annotations that name their annotator by id only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, SupportsIndex, SupportsInt
from xml.sax.saxutils import quoteattr

from coldstart.tasks import lsclient  # by module: tests point its client at a recorded server
from coldstart.tasks.commands import command
from coldstart.tasks.config import UNKNOWN_LABEL
from coldstart.tasks.errors import ConfigError, LabelFileError
from coldstart.tasks.lsclient import LabelStudioError
from coldstart.tasks.ontology import negative_labels

log = logging.getLogger(__name__)

IMAGE = "image"  # the <Image> control's name, and the task data key it shows ($image)
LABEL = "label"  # the <Choices> control's name: the from_name of every answer
POLYGON = "region"  # the <PolygonLabels> control's name: the from_name of every region pre-annotation
NOTE = "note"  # the task data key shown above the choices (<Header value="$note"/>): why a re-check is asked
# A re-check's pre-annotation is the label a person already gave (not a model's), named so.
HUMAN_LABEL_VERSION = "human-label"
# Without a known human label, a re-check is pre-annotated with the model's disputing suggestion, named so.
DISPUTING_MODEL_VERSION = "held-out-model-disputes"
# Label Studio serves local files under this URL; ``d`` is relative to its document root, which
# must be the workspace's data/ folder (LOCAL_FILES_DOCUMENT_ROOT).
LOCAL_FILES_PREFIX = "/data/local-files/?d=images/"
IMAGE_KEYS = ("image_id", "path")  # what an imported row names its image by
# Region tools whose results intake cannot turn into a region answer: the fix is the polygon tool.
NOT_READ = {"brushlabels": "brush/rectangle", "brush": "brush/rectangle", "rectanglelabels": "brush/rectangle",
            "rectangle": "brush/rectangle", "ellipselabels": "ellipse/keypoint", "ellipse": "ellipse/keypoint",
            "keypointlabels": "ellipse/keypoint", "keypoint": "ellipse/keypoint"}
MAX_SIDE = 1 << 17  # original_width/height above this is not an image Label Studio showed
MAX_PERIMETER = 2_000_000  # pixels of outline rasterized per polygon (the rasterizer's memory grows with it)


# --- export ---------------------------------------------------------------------------------------


def _choice(label: str) -> list[dict]:
    return [{"from_name": LABEL, "to_name": IMAGE, "type": "choices", "value": {"choices": [label]}}]


def _data(image_id: str, path: str, url: str | None) -> dict:
    return {IMAGE: url or LOCAL_FILES_PREFIX + path, "image_id": image_id, "path": path}


def task(image_id: str, path: str, label: str, score: float, model_version: str, url: str | None = None) -> dict:
    """One task: the image at ``path`` (relative to data/images/), pre-annotated with ``label``.
    ``url``: where Label Studio's browser fetches it (a signed `coldstart api` URL); default: its
    local-files URL."""
    return {
        "data": _data(image_id, path, url),
        "predictions": [{"model_version": model_version, "score": float(score), "result": _choice(label)}],
    }


def recheck_note(human_label: str, suggested: str, probability: float) -> str:
    """What a re-check task tells the annotator: why the image is asked again, and what each side says."""
    return (f"Asked again: a person labeled this {human_label!r}; the model (held out from that label) says "
            f"{suggested!r} with p={probability:.2f}. Keep the person's label or choose the right class.")


def recheck_task(image_id: str, path: str, suggested: str, probability: float, *, human_label: str | None,
                 url: str | None = None, note: str = "") -> dict:
    """A re-check: an image a person already labeled ``human_label`` that the held-out model
    disputes (it says ``suggested`` with ``probability``). ``data.note`` says so (shown above the
    choices), ``data.purpose`` is ``recheck`` (a Data Manager column to filter by), and
    ``data.human_label`` / ``data.model_suggestion`` hold both sides.

    The pre-annotation is the person's label, named ``model_version: "human-label"``, its score
    1 - p (low: a disputed label sorts first by prediction score). Without a known human label it
    is the model's suggestion, named ``held-out-model-disputes``, and ``note`` (the review CSV's)
    is shown instead."""
    data = {**_data(image_id, path, url), "purpose": "recheck", "model_suggestion": suggested}
    if human_label:
        data.update(human_label=human_label, **{NOTE: recheck_note(human_label, suggested, probability)})
        version, label, score = HUMAN_LABEL_VERSION, human_label, 1.0 - float(probability)
    else:
        data[NOTE] = note or (f"Asked again: a person's label of this image is disputed by the model (held out), "
                              f"which says {suggested!r} with p={probability:.2f}. Choose the right class.")
        version, label, score = DISPUTING_MODEL_VERSION, suggested, float(probability)
    return {"data": data, "predictions": [{"model_version": version, "score": round(score, 6),
                                           "result": _choice(label)}]}


def review_tasks(batch: list[dict], url_of: Callable[[str, str], str] | None = None, *,
                 human: dict[str, str] | None = None) -> list[dict]:
    """The tasks of a review batch (rows of ``round-NNN.batch.csv``: image_id, image, purpose,
    predicted_label, confidence, model_id, source, note), in the order given. A re-check
    (``purpose: recheck``) becomes a ``recheck_task`` whose human label is ``human[image_id]``
    (else the row's ``human_label``); every other row a ``task`` pre-annotated with the model's
    label. ``url_of(image_id, path)``: the image's URL (``labelstudio.images: api``); None:
    local files."""
    out = []
    for b in batch:
        url = url_of(b["image_id"], b["image"]) if url_of else None
        if b.get("purpose") == "recheck":
            out.append(recheck_task(b["image_id"], b["image"], b["predicted_label"], float(b["confidence"]),
                                    human_label=(human or {}).get(b["image_id"]) or b.get("human_label") or None,
                                    url=url, note=b.get("note") or ""))
        else:
            out.append(task(b["image_id"], b["image"], b["predicted_label"], float(b["confidence"]),
                            b.get("model_id") or b.get("source") or "", url))
    return out


def honest_rechecks(tasks: list[dict], batch: list[dict], human: dict[str, str]) -> list[dict]:
    """``tasks`` (a round's tasks.json) with each re-check of ``batch`` that was written as a plain
    task (by an older coldstart: the model's suggestion under ``model_version: "human"``, no note)
    rewritten as a ``recheck_task``, keeping its image URL; ``human``: image id -> its current
    human label. Tasks already marked ``purpose: recheck`` and all others are returned as they are."""
    rechecks = {b["image_id"]: b for b in batch if b.get("purpose") == "recheck"}
    out = []
    for t in tasks:
        data = t.get("data") if isinstance(t, dict) else None
        b = rechecks.get(data.get("image_id")) if isinstance(data, dict) else None
        if b is None or not isinstance(data, dict) or data.get("purpose") == "recheck":
            out.append(t)
            continue
        out.append(recheck_task(b["image_id"], b["image"], b["predicted_label"], float(b["confidence"]),
                                human_label=human.get(b["image_id"]), url=data.get(IMAGE), note=b.get("note") or ""))
    return out


def human_task(image_id: str, path: str, label: str, url: str | None = None) -> dict:
    """A task whose label a person gave: imported as an annotation (Label Studio credits the
    importing user), not as a prediction."""
    return {"data": _data(image_id, path, url),
            "annotations": [{"result": _choice(label), "was_cancelled": False, "ground_truth": False}]}


def export_tasks(rows: list[dict], url_of: Callable[[str, str], str] | None = None) -> list[dict]:
    """``coldstart export --format labelstudio``: one task per labeled file (rows with image_id,
    path, label, source, confidence, optionally model_id). Human labels (``source: human``) are
    ``annotations``; model labels stay ``predictions`` (model_version: the row's model_id, else
    its source). ``url_of(image_id, path)``: the image URL when ``labelstudio.images: api`` (as
    the round's tasks have them); None: local files."""
    out = []
    for r in rows:
        url = url_of(r["image_id"], r["path"]) if url_of else None
        if r["source"] == "human":
            out.append(human_task(r["image_id"], r["path"], r["label"], url))
        else:
            out.append(task(r["image_id"], r["path"], r["label"], r["confidence"], r.get("model_id") or r["source"],
                            url))
    return out


def tasks_json(tasks: list[dict]) -> str:
    """The text of a ``tasks.json`` to import into Label Studio (UTF-8, class names unescaped)."""
    return json.dumps(tasks, ensure_ascii=False, indent=1) + "\n"


NONE_OF_THESE = "None of these: the image fits no class (or write new:NAME in a CSV to propose one)"


def label_config(classes: list[str], *, polygons: list[str] | None = None) -> str:
    """The labeling config (``label_config.xml``): the image, a header showing the task's ``note``
    (a re-check says why it is asked again; empty otherwise), and one single choice among ``classes``;
    with ``polygons``, also a polygon control (``POLYGON``) whose labels are those classes, for
    region pre-annotations (``regions.regions_to_labelstudio``) a person can edit.

    Class names are XML-attribute escaped: quotes, ``&`` and ``<`` are legal in a class name.
    """
    # The last choice is always "none of these" (stored as UNKNOWN_LABEL: tasks/ontology.py).
    none = f'    <Choice value="{UNKNOWN_LABEL}" hint="{NONE_OF_THESE}"/>'
    choices = "\n".join([*(f"    <Choice value={quoteattr(c)}/>" for c in classes if c != UNKNOWN_LABEL), none])
    polygon = "" if polygons is None else (
        f'  <PolygonLabels name="{POLYGON}" toName="{IMAGE}" strokeWidth="2" pointSize="small" opacity="0.4">\n'
        + "".join(f"    <Label value={quoteattr(c)}/>\n" for c in [*(c for c in polygons if c != UNKNOWN_LABEL),
                                                                       UNKNOWN_LABEL]) + "  </PolygonLabels>\n")
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n  <Header value="${NOTE}" size="5"/>\n'
            f'  <Choices name="{LABEL}" toName="{IMAGE}" choice="single" showInLine="true">\n{choices}\n'
            f'  </Choices>\n{polygon}</View>\n')


def project_config(ontology, *, regions: bool) -> str:
    """The labeling config of a workspace's project: the ontology's classes as the image's
    choice and, with ``regions`` (regions.enabled), as region polygons too, the negative
    (background) labels last."""
    classes = ontology.class_names
    if not regions:
        return label_config(classes)
    negatives = negative_labels(ontology)
    return label_config(classes, polygons=[c for c in classes if c not in negatives] + sorted(negatives))


# --- import ---------------------------------------------------------------------------------------


def parse_export(text: str, source: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """A Label Studio JSON export -> (rows, problems).

    Rows are ("task N (id X)", {image_id, path, label, annotator}) for the image's choice; ``label``
    is empty for a task nobody answered. A task's polygons (``polygonlabels`` results of control
    ``POLYGON``, one row each, after its image row) are region answers, ("task N (id X)",
    {image_id, path, label, annotator, result_id, result, points, original_width,
    original_height}): ``result_id`` the result's id (coldstart's pre-annotations carry the region
    id, ``<region id>-k`` for a mask's k-th part), ``result`` where it is ("annotation 1: result
    2"), ``points`` its [x, y] vertices in percent of the image's width and height, the sizes in
    pixels. A task with polygons but no choice gives no image row (its image was not answered,
    its regions were). Every field is checked for the JSON type Label Studio writes: a task with a
    wrong one (a string where an object belongs, a number as a choice, a polygon without one
    label, brush strokes, ...) is a problem named by task, and gives no row. Problems name their
    task; the caller lists them all. Raises LabelFileError (for ``source``) when the text is not
    an export at all.
    """
    try:
        tasks = json.loads(text)
    except RecursionError:
        raise LabelFileError(source, ["JSON nested too deeply to be a Label Studio export"]) from None
    except ValueError as e:  # JSONDecodeError, or an integer over Python's digit limit
        raise LabelFileError(source, [f"not a readable JSON file: {str(e)[:200]}"]) from None
    if not isinstance(tasks, list):
        raise LabelFileError(source, [f"expected a Label Studio JSON export: a list of tasks, not {_kind(tasks)}"])
    rows, problems = [], []
    for n, item in enumerate(tasks, start=1):
        task_rows, task_problems = _parse_min(n, item) if _is_min(item) else _parse_task(n, item)
        problems += task_problems
        rows += task_rows
    return rows, problems


def _is_min(item: object) -> bool:
    """A JSON_MIN export's row: flat, the task's data keys beside the control's answer and
    ``annotation_id`` (no ``data`` object, no ``annotations`` list)."""
    return isinstance(item, dict) and "data" not in item and "annotations" not in item and "annotation_id" in item


def _parse_min(n: int, item: dict) -> tuple[list[tuple[str, dict]], list[str]]:
    """One JSON_MIN row: ``{image, image_id, path, id, label, annotator, annotation_id, ...}``;
    ``label`` (the choice control's name) holds the class. Polygons come as a list under the
    region control's name: JSON_MIN drops what matches them to regions, so they are refused with
    the fix (export JSON)."""
    task_id = item.get("id")
    shown = task_id if isinstance(task_id, int) or (isinstance(task_id, str) and len(task_id) <= 40) else "?"
    where = f"task {n} (id {shown})"
    try:
        if item.get(POLYGON) not in (None, []):
            raise _Shape(f"{POLYGON!r} holds polygons, which a JSON_MIN export cannot tie to regions: export as JSON")
        label = item.get(LABEL)
        if isinstance(label, dict) and isinstance(label.get("choices"), list):
            label = label["choices"]
        if isinstance(label, list):
            if len(label) > 1:
                raise _Shape(f"one annotation chose several labels {label[:5]}; pick one")
            label = label[0] if label else ""
        if label is not None and not isinstance(label, str):
            raise _Shape(f"{LABEL!r} is {_kind(label)}, expected a class name (a string)")
        image_id = _get(item, "image_id", (str,), "", "")
        path = _image_path(item)
        who = _annotator(item.get("annotator"), "")
    except _Shape as e:
        return [], [f"{where}: {e}"]
    return [(where, {"image_id": image_id, "path": path, "label": label or "", "annotator": who})], []


class _Shape(Exception):
    """A field of the export has the wrong JSON type (the message says which)."""

def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _get(obj: dict, key: str, types: tuple, where: str, default=None):
    """``obj[key]`` if it has one of ``types`` (missing or null: ``default``), else _Shape."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise _Shape(f"{where}{key!r} is {_kind(value)}, expected {' or '.join(_kind(t()) for t in types)}")
    return value


def _parse_task(n: int, item: object) -> tuple[list[tuple[str, dict]], list[str]]:
    """One exported task -> (rows, problems): the image's row (unless only regions were answered),
    then a row per polygon. Cancelled annotations are skipped; annotators who disagree on the
    image's choice are a problem (settled in Label Studio, not guessed here). Whether they agree
    on a region is checked by intake, which knows which polygons outline the same region."""
    task_id = item.get("id") if isinstance(item, dict) else None
    shown = task_id if isinstance(task_id, int) or (isinstance(task_id, str) and len(task_id) <= 40) else "?"
    where = f"task {n} (id {shown})" if isinstance(item, dict) else f"task {n}"
    if not isinstance(item, dict):
        return [], [f"{where}: not a task object with 'data' (it is {_kind(item)})"]
    try:
        data = _get(item, "data", (dict,), "")
        if data is None:
            raise _Shape("no 'data' object")
        image_id, path = _get(data, "image_id", (str,), "data ", ""), _image_path(data)
        answers, polygons = [], []
        for k, ann in enumerate(_get(item, "annotations", (list,), "", []), start=1):
            choices, drawn = _answers(ann, f"annotation {k}: ")
            answers += choices
            polygons += drawn
    except _Shape as e:
        return [], [f"{where}: {e}"]
    labels = sorted({label for label, _ in answers})
    if len(labels) > 1:
        return [], [f"{where}: annotators disagree ({', '.join(labels)}); settle it in Label Studio and export again"]
    annotators = ",".join(sorted({who for _, who in answers}))
    rows = [] if polygons and not labels else [
        (where, {"image_id": image_id, "path": path, "label": labels[0] if labels else "", "annotator": annotators})]
    return rows + [(where, {"image_id": image_id, "path": path, **p}) for p in polygons], []


def _answers(ann: object, where: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """(label, annotator) of one annotation's image choice (none if cancelled or unanswered), and
    its polygons (see parse_export); _Shape if it is not one Label Studio writes, it chose
    several labels, or it outlines regions with a tool other than the polygon."""
    if not isinstance(ann, dict):
        raise _Shape(f"{where}is {_kind(ann)}, expected an object")
    if _get(ann, "was_cancelled", (bool,), where, False):  # skipped by the annotator: no answer
        return [], []
    who = _annotator(ann.get("completed_by"), where)
    results, polygons = [], []
    for k, r in enumerate(_get(ann, "result", (list,), where, []), start=1):
        at = f"{where}result {k}: "
        if not isinstance(r, dict):
            raise _Shape(f"{at}is {_kind(r)}, expected an object")
        kind = _get(r, "type", (str,), at)
        if kind == "choices":
            results.append((_get(r, "from_name", (str,), at, ""), _get(r, "value", (dict,), at, {}), at))
        elif kind in ("polygonlabels", "polygon"):
            label, rid, points, width, height = _polygon(r, at)
            polygons.append({"label": label, "annotator": who, "result_id": rid, "result": f"{where}result {k}",
                             "points": points, "original_width": width, "original_height": height})
        elif kind in NOT_READ:
            raise _Shape(f"{at}{NOT_READ[kind]} annotations are not read: outline regions with the polygon tool of "
                         f"control {POLYGON!r} (coldstart's label_config.xml)")
    ours = [(value, at) for name, value, at in results if name == LABEL]
    if not ours and results:  # answered, but not in our control: a project with another config
        names = sorted({name for name, _, _ in results})
        raise _Shape(f"the choices come from control(s) {', '.join(names)}, not {LABEL!r}; "
                     f"set the project up with coldstart's label_config.xml")
    choices = []
    for value, at in ours:
        for c in _get(value, "choices", (list,), at + "value ", []):
            if not isinstance(c, str):
                raise _Shape(f"{at}a choice is {_kind(c)}, expected a class name (a string)")
            choices.append(c)
    if len(choices) > 1:
        raise _Shape(f"one annotation chose several labels {choices[:5]}; pick one")
    return ([(choices[0], who)] if choices else []), polygons


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _polygon(r: dict, at: str) -> tuple[str, str, list[list[float]], int, int]:
    """A polygon result's (label, id, points, original_width, original_height), each checked;
    _Shape says what is wrong and how to fix it."""
    name = _get(r, "from_name", (str,), at, "")
    if name != POLYGON:
        raise _Shape(f"{at}a polygon of control {name!r}, not {POLYGON!r}; set the project up with coldstart's "
                     f"label_config.xml")
    rid = _get(r, "id", (str, int), at, "")
    value = _get(r, "value", (dict,), at, {})
    labels = _get(value, "polygonlabels", (list,), at + "value ", [])
    if len(labels) != 1:
        raise _Shape(f"{at}polygon {str(rid)[:40]!r} needs exactly one label in value.polygonlabels, it has "
                     f"{len(labels) or 'none'}: give it one class in Label Studio")
    if not isinstance(labels[0], str) or not labels[0].strip():
        got = "empty" if isinstance(labels[0], str) else _kind(labels[0])
        raise _Shape(f"{at}polygon {str(rid)[:40]!r}: its label is {got}, expected a class name (a string)")
    points = _get(value, "points", (list,), at + "value ", [])
    if len(points) < 3:
        raise _Shape(f"{at}polygon {str(rid)[:40]!r} has {len(points)} point(s) in value.points; an outline needs "
                     f"at least 3 [x, y] points")
    for k, p in enumerate(points, start=1):
        if not (isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p)):
            raise _Shape(f"{at}polygon {str(rid)[:40]!r}: point {k} is {json.dumps(p)[:60]}, expected [x, y] (two "
                         f"numbers, percent of the image's width and height)")
        if not all(-1 <= v <= 101 for v in p):
            raise _Shape(f"{at}polygon {str(rid)[:40]!r}: point {k} {json.dumps(p)[:60]} is outside the image "
                         f"(points are percent of its width and height, 0-100)")
    for key in ("original_width", "original_height"):
        v = r.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= MAX_SIDE:
            raise _Shape(f"{at}polygon {str(rid)[:40]!r}: {key!r} is {json.dumps(v)[:40]}, expected the image's size "
                         f"in pixels (a positive whole number), as Label Studio exports it")
    return (labels[0], str(rid), [[float(x), float(y)] for x, y in points], r["original_width"],
            r["original_height"])


def polygon_rle(points: list[list[float]], width: int, height: int) -> dict | None:
    """A polygon in percent of a ``width`` x ``height`` image -> COCO RLE ``{"size": [H, W],
    "counts": str}`` of the pixels it covers, or None when its outline is too long to rasterize
    (over MAX_PERIMETER pixels)."""
    from pycocotools import mask as mask_utils

    xy = [(min(max(x, 0.0), 100.0) * width / 100.0, min(max(y, 0.0), 100.0) * height / 100.0) for x, y in points]
    perimeter = sum(math.dist(a, b) for a, b in zip(xy, xy[1:] + xy[:1]))
    if perimeter > MAX_PERIMETER:
        return None
    rle = mask_utils.merge(mask_utils.frPyObjects([[v for p in xy for v in p]], height, width))
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes)
            else counts}


def annotator_of(who: object) -> str:
    """``completed_by`` as intake records it (see _annotator), or "" when it has an odd shape."""
    try:
        return _annotator(who, "")
    except _Shape:
        return ""


def _annotator(who: object, where: str) -> str:
    """``completed_by`` is a user object (email, id) in full exports and a bare id in minimal ones:
    the email where the export has it, else ``ls-user-<id>`` (a bare "1" says nothing)."""
    if isinstance(who, dict):
        email = _get(who, "email", (str,), where + "completed_by ")
        if email:
            return email
        who = _get(who, "id", (int, str), where + "completed_by ")
    elif who is not None and (isinstance(who, bool) or not isinstance(who, (int, str))):
        raise _Shape(f"{where}'completed_by' is {_kind(who)}, expected a user object or id")
    return f"ls-user-{who}" if who not in (None, "") else ""


def _image_path(data: dict) -> str:
    """The image path relative to data/images/: ``path`` as exported, else the URL minus the
    prefix. Kept as written (spaces too): intake matches it exactly first."""
    image = _get(data, "path", (str,), "data ") or _get(data, IMAGE, (str,), "data ") or ""
    return image[len(LOCAL_FILES_PREFIX):] if image.startswith(LOCAL_FILES_PREFIX) else image


# --- a live server: before a round, and who answered -----------------------------------------------

TITLE_MIN, TITLE_MAX = 3, 50  # what Label Studio 1.23 accepts for a project title (after trimming spaces)


def project_title(configured: str | None, folder: str) -> str:
    """The Label Studio project title of a workspace: ``labelstudio.project`` as configured
    (ConfigError, with the fix, when Label Studio would refuse it: under 3 or over 50 characters
    once trimmed, as it trims), else the workspace folder's name, made valid: "coldstart <name>"
    when it is under 3 characters (``ws`` -> ``coldstart ws``), cut to 50 when longer."""
    if configured is not None:
        title = configured.strip()
        if not TITLE_MIN <= len(title) <= TITLE_MAX:
            raise ConfigError(f"labelstudio.project {configured!r} is {len(title)} character(s) long (trimmed); Label "
                              f"Studio wants a project title of {TITLE_MIN} to {TITLE_MAX} characters: set "
                              f"labelstudio.project in params.yaml to one (or remove it to use the workspace "
                              f"folder's name)")
        return title
    title = folder.strip()  # Label Studio trims the ends, as here
    if len(title) < TITLE_MIN:
        title = f"coldstart {title}".strip()
    return title[:TITLE_MAX].rstrip()


@dataclass
class Preflight:
    """What ``preflight`` found: the server, the project title (``project``: its id, None until
    the first push creates it), the token's user, and a connected ``client`` (close it)."""
    url: str
    title: str
    user: str
    project: int | None
    client: Any = field(repr=False, default=None)
    warnings: list[str] = field(default_factory=list)


def preflight(ws, params=None, *, transport=None) -> Preflight | None:
    """Check, before a round that hands its batch to Label Studio (``round --wait`` with
    ``labelstudio.url`` set), everything that would otherwise fail only after the round: the
    project title is one Label Studio accepts (``project_title``), the token is in the
    environment, the server answers and accepts the token (``GET /api/current-user/whoami``).
    With ``labelstudio.images: api`` it also asks ``api_url``'s ``/health`` and warns (does not
    fail) when `coldstart api` does not answer there: annotators would see no images.

    None when ``labelstudio.url`` is not set (files only: nothing to check). Raises ConfigError
    (the title) or LabelStudioError (token, server), each with the fix."""
    params = params if params is not None else ws.params()
    cfg = params.labelstudio
    if not cfg.url:
        return None
    title = project_title(cfg.project, ws.root.name)
    token = os.environ.get(cfg.token_env, "").strip()
    if not token:
        raise LabelStudioError(f"labelstudio.url is set but ${cfg.token_env} is empty: export your Label Studio access "
                               f"token (Account & Settings -> Personal Access Token) as {cfg.token_env}")
    client = lsclient.LabelStudio(cfg.url, token, transport=transport)
    try:
        me = client.call("GET", "/api/current-user/whoami")
        if not isinstance(me, dict) or "id" not in me:
            raise LabelStudioError(f"{cfg.url}/api/current-user/whoami did not answer with a user: is labelstudio.url "
                                   f"the address of Label Studio (not of `coldstart api`)?")
        project = client.find_project(title)
    except BaseException:
        client.close()
        raise
    found = Preflight(cfg.url, title, str(me.get("email") or me.get("username") or me["id"]), project, client)
    if cfg.images == "api" and cfg.api_url:
        import httpx

        try:
            with httpx.Client(timeout=3, transport=transport) as http:
                ok = http.get(cfg.api_url.rstrip("/") + "/health").status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            found.warnings.append(f"labelstudio.images is api but `coldstart api` does not answer at {cfg.api_url}/health"
                                  f": start it ({command('coldstart')} api --workspace {shlex.quote(str(ws.root))}) or "
                                  f"annotators will see no images")
    for w in found.warnings:
        log.warning("%s", w)
    return found


class Annotators:
    """Label Studio user id -> email. Webhooks and exports name an annotation's annotator by id
    (``completed_by: 1``); ``named`` puts the email in (``{"id": 1, "email": ...}``, which intake
    records as the annotator) when ``lookup`` (a function returning every user's id -> email,
    e.g. ``LabelStudio.user_emails``) knows it. An unknown id asks again at most every
    ``retry_s`` seconds; a failed lookup is logged and the annotation keeps its id (intake then
    records ``ls-user-<id>``)."""
    def __init__(self, lookup: Callable[[], dict[int, str]] | None, *, retry_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.lookup, self.retry_s, self.clock = lookup, retry_s, clock
        self.emails: dict[int, str] = {}
        self._asked_at: float | None = None

    @classmethod
    def for_workspace(cls, ws, **kwargs) -> Annotators:
        """The users of the workspace's Label Studio (``labelstudio.url``, the token from
        ``labelstudio.token_env``, both read when asked); no lookup when either is missing."""

        def lookup() -> dict[int, str]:
            cfg = ws.params().labelstudio
            token = os.environ.get(cfg.token_env, "").strip()
            if not cfg.url or not token:
                return {}
            with lsclient.LabelStudio(cfg.url, token, timeout=10) as client:
                return client.user_emails()

        return cls(lookup, **kwargs)

    def email(self, user_id: object) -> str | None:
        """The email of Label Studio user ``user_id`` (an int or a numeric string), or None."""
        if not isinstance(user_id, (str, bytes, SupportsInt, SupportsIndex)):
            return None  # int() would raise TypeError
        try:
            uid = int(user_id)
        except (TypeError, ValueError):
            return None
        if uid not in self.emails and self.lookup is not None and (
                self._asked_at is None or self.clock() - self._asked_at >= self.retry_s):
            self._asked_at = self.clock()
            try:
                self.emails = {**self.emails, **self.lookup()}
            except Exception as e:  # the server is away or refuses: the id is recorded instead
                log.warning("could not look up Label Studio user %s's email (%s); recorded as ls-user-%s", uid, e, uid)
        return self.emails.get(uid) or None

    def named(self, annotation: dict) -> dict:
        """``annotation`` (a copy) with ``completed_by`` as ``{"id", "email"}`` when it names a user
        by id (bare, or an object without an email) whose email is known; else as it came."""
        who = annotation.get("completed_by") if isinstance(annotation, dict) else None
        if isinstance(who, dict):
            if who.get("email"):
                return annotation
            uid = who.get("id")
        elif isinstance(who, (int, str)) and not isinstance(who, bool):
            uid = who
        else:
            return annotation
        email = self.email(uid)
        if email is None:
            return annotation
        return {**annotation, "completed_by": {**(who if isinstance(who, dict) else {}), "id": uid, "email": email}}
