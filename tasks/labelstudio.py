"""Label Studio formats, both ways, in one place.

Export: review items become Label Studio tasks (``tasks.json``) with the model's label as a
pre-annotation, plus the project's labeling config (``label_config.xml``: one image, one
single-choice control). Import: a Label Studio JSON export of those tasks becomes rows of
(image, label, annotator) for intake to validate like a CSV.

The control names, the data key and the local-files prefix below are used by both directions,
so what is exported is what the import reads back. No files are read or written here.
"""

from __future__ import annotations

import json
import unicodedata
from xml.sax.saxutils import quoteattr

from coldstart.tasks.errors import LabelFileError

IMAGE = "image"  # the <Image> control's name, and the task data key it shows ($image)
LABEL = "label"  # the <Choices> control's name: the from_name of every answer
# Label Studio serves local files under this URL; ``d`` is relative to its document root, which
# must be the workspace's data/ folder (LOCAL_FILES_DOCUMENT_ROOT).
LOCAL_FILES_PREFIX = "/data/local-files/?d=images/"
IMAGE_KEYS = ("image_id", "path")  # what an imported row names its image by


# --- export ---------------------------------------------------------------------------------------


def task(image_id: str, path: str, label: str, score: float, model_version: str) -> dict:
    """One task: the image at ``path`` (relative to data/images/), pre-annotated with ``label``."""
    return {
        "data": {IMAGE: LOCAL_FILES_PREFIX + path, "image_id": image_id, "path": path},
        "predictions": [{
            "model_version": model_version,
            "score": float(score),
            "result": [{"from_name": LABEL, "to_name": IMAGE, "type": "choices", "value": {"choices": [label]}}],
        }],
    }


def tasks_json(tasks: list[dict]) -> str:
    """The text of a ``tasks.json`` to import into Label Studio (UTF-8, class names unescaped)."""
    return json.dumps(tasks, ensure_ascii=False, indent=1) + "\n"


def label_config(classes: list[str]) -> str:
    """The labeling config (``label_config.xml``): the image and one single choice among ``classes``.

    Class names are XML-attribute escaped: quotes, ``&`` and ``<`` are legal in a class name.
    """
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n'
            f'  <Choices name="{LABEL}" toName="{IMAGE}" choice="single" showInLine="true">\n{choices}\n'
            f'  </Choices>\n</View>\n')


# --- import ---------------------------------------------------------------------------------------


def parse_export(text: str, source: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """A Label Studio JSON export -> (rows, problems).

    Rows are ("task N (id X)", {image_id, path, label, annotator}); ``label`` is empty for a task
    nobody answered. Problems name their task; the caller lists them all. Raises LabelFileError
    (for ``source``) when the text is not an export at all.
    """
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabelFileError(source, [f"not a readable JSON file: {e}"]) from None
    if not isinstance(tasks, list):
        raise LabelFileError(source, ["expected a Label Studio JSON export: a list of tasks"])
    rows, problems = [], []
    for n, item in enumerate(tasks, start=1):
        row, task_problems = _parse_task(n, item)
        problems += task_problems
        if row is not None:
            rows.append(row)
    return rows, problems


def _parse_task(n: int, item: object) -> tuple[tuple[str, dict] | None, list[str]]:
    """One exported task -> (row or None, problems). Cancelled annotations are skipped; annotators
    who disagree are a problem (settled in Label Studio, not guessed here)."""
    where = f"task {n} (id {item.get('id', '?')})" if isinstance(item, dict) else f"task {n}"
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        return None, [f"{where}: not a task object with 'data'"]
    labels, annotators, problems = [], [], []
    for ann in item.get("annotations") or []:
        if not isinstance(ann, dict):
            problems.append(f"{where}: an annotation is not an object; export again as JSON from Label Studio")
            continue
        if ann.get("was_cancelled"):  # skipped by the annotator: no answer
            continue
        choices, problem = _choices(ann)
        if problem:
            problems.append(f"{where}: {problem}")
        elif choices:
            labels.append(choices[0])
            annotators.append(_annotator(ann.get("completed_by")))
    if len(set(labels)) > 1:
        return None, problems + [f"{where}: annotators disagree ({', '.join(sorted(set(labels)))}); settle it in "
                                 f"Label Studio and export again"]
    data = item["data"]
    return (where, {"image_id": _text(data.get("image_id")), "path": _image_path(data),
                    "label": labels[0] if labels else "", "annotator": ",".join(sorted(set(annotators)))}), problems


def _choices(ann: dict) -> tuple[list[str], str | None]:
    """The classes one annotation chose in the ``label`` control, and a problem if that is not one."""
    results = [r for r in ann.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    ours = [r for r in results if r.get("from_name") == LABEL]
    choices = [_text(c) for r in ours for c in (r.get("value") or {}).get("choices", [])]
    if len(choices) > 1:
        return choices, f"one annotation chose several labels {choices}; pick one"
    if not ours and results:  # answered, but not in our control: a project with another config
        names = sorted({str(r.get("from_name")) for r in results})
        return [], (f"the choices come from control(s) {', '.join(names)}, not {LABEL!r}; set the project up "
                    f"with coldstart's label_config.xml")
    return choices, None


def _annotator(who: object) -> str:
    """``completed_by`` is a user object (email, id) in full exports and a bare id in minimal ones:
    the email where the export has it, else ``ls-user-<id>`` (a bare "1" says nothing)."""
    if isinstance(who, dict):
        if who.get("email"):
            return str(who["email"])
        who = who.get("id")
    return f"ls-user-{who}" if who not in (None, "") else ""


def _image_path(data: dict) -> str:
    """The image path relative to data/images/: ``path`` as exported, else the URL minus the prefix."""
    image = _text(data.get("path") or data.get(IMAGE))
    return image[len(LOCAL_FILES_PREFIX):] if image.startswith(LOCAL_FILES_PREFIX) else image


def _text(value: object) -> str:
    # Labels are compared after NFC normalisation everywhere (README, "Human answers").
    return unicodedata.normalize("NFC", str(value or "").strip())
