"""`coldstart round --wait`: a round, its review batch handed to people, their answers awaited,
then the next round (intake -> train -> relabel -> ...) on them.

With ``labelstudio.url`` set, the batch goes straight into the Label Studio project (created
from the ontology's labeling config the first time) as tasks with predictions, and the
project's annotations are fetched every ``labelstudio.poll_s`` seconds into the same spool the
webhook of `coldstart api` fills: each version of an annotation counts once, whichever way it
came. Without it, answers are awaited as files dropped into data/inbox/. Either way the wait
ends when ``labelstudio.wait_answers`` of the batch's images (default: all of them) have a new
human answer, or after ``labelstudio.wait_timeout_min``. Only answers taken in after the round
count: a re-check (an image a person labeled before, which the model disputes) is answered when
someone answers it again, not by the label that put it in the batch. A scheduled round
(`coldstart serve`) never waits.

Before anything is pushed, ``labelstudio.preflight`` checks the project title, the server and
the token (the round command can call it before the round, so a typo costs seconds, not a round).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from coldstart.tasks import labelstudio
from coldstart.tasks.commands import command
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.intake import spool_annotation
from coldstart.tasks.labellog import current_answers, human_labels, read_events
from coldstart.tasks.labelstudio import Annotators
from coldstart.tasks.lsclient import LabelStudioError
from coldstart.tasks.stages import Context, take_in
from coldstart.tasks.workspace import Workspace, read_csv

log = logging.getLogger(__name__)


@dataclass
class Waited:
    asked: int  # images in the batch
    wanted: int
    answered: int  # images of the batch with a human answer taken in since the round (new answers only)
    seconds: float
    pushed: int = 0  # tasks imported into Label Studio
    project: int | None = None
    timed_out: bool = False
    rechecks: int = 0  # of ``asked``: images a person labeled before (asked again); answered only when answered anew


def label_studio(ws: Workspace, found=None):
    """(client, project id) for ``labelstudio.url``: ``found`` (or a fresh
    ``labelstudio.preflight``: title, server and token checked), the project found by that title
    or created with the workspace's labeling config; (None, None) when no server is configured."""
    params = ws.params()
    found = found if found is not None else labelstudio.preflight(ws, params)
    if found is None:
        return None, None
    client, title = found.client, found.title
    config = labelstudio.project_config(params.ontology, regions=params.regions.enabled)
    project = found.project if found.project is not None else client.find_project(title)
    if project is None:
        project = client.create_project(title, config)
        log.info("Label Studio: created project %r (id %s) at %s", title, project, found.url)
        if params.labelstudio.images == "local-files":
            _local_storage(ws, client, project)
    else:
        current = client.call("GET", f"/api/projects/{project}").get("label_config", "")
        if current.strip() != config.strip() and only_adds_choices(current, config):
            # An older coldstart config (before a class was adopted, or before "unknown"): bring it
            # up to date, else the new choice cannot be picked. Label Studio refuses a config that
            # existing annotations do not fit; then the warning below says what to do.
            try:
                client.call("PATCH", f"/api/projects/{project}", json={"label_config": config})
                log.info("Label Studio: project %r (id %s) now offers every class of params.yaml", title, project)
                current = config
            except LabelStudioError as e:
                log.warning("Label Studio did not take the new labeling config of project %r: %s", title, e)
        if current.strip() != config.strip():
            log.warning("Label Studio project %r (id %s) has a labeling config other than coldstart's: paste the output "
                        "of `%s labelstudio config --workspace %s` into its Settings -> Labeling Interface -> "
                        "Code (re-check notes show only with it)", title, project, command("coldstart"),
                        shlex.quote(str(ws.root)))
    return client, project


def only_adds_choices(current: str, ours: str) -> bool:
    """Whether labeling config ``ours`` is ``current`` with choices (and polygon labels) added:
    the same controls, none removed. Such a change is safe to make to a project with answers."""
    def controls(text: str) -> dict[tuple[str, str], set[str]] | None:
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            return None
        return {(el.tag, el.get("name", "")): {c.get("value", "") for c in el} for el in root
                if el.tag in ("Choices", "PolygonLabels")}

    before, after = controls(current), controls(ours)
    if before is None or after is None or set(before) != set(after):
        return False
    return all(before[k] <= after[k] for k in before) and any(before[k] < after[k] for k in before)


def _local_storage(ws: Workspace, client, project: int) -> None:
    """``labelstudio.images: local-files``: a Local Files storage on data/images/ for a project
    coldstart created (without one its images answer 404). Label Studio must run on this machine
    with LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<workspace>/data;
    when it refuses, the round goes on and the warning says what to set."""
    try:
        client.add_local_storage(project, str(ws.images.resolve()))
    except LabelStudioError as e:
        log.warning("Label Studio did not add a Local Files storage for %s to project %s (%s): images will not show. "
                    "Start it with LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=%s and add "
                    "the storage (project Settings -> Cloud Storage -> Add Source Storage -> Local files, path %s), "
                    "or set labelstudio.images: api (docs/labelstudio.md)", ws.images, project, e,
                    ws.root.resolve() / "data", ws.images.resolve())


def push_batch(ws: Workspace, round_no: int, client, project: int) -> int:
    """Import round ``round_no``'s review tasks (and its region tasks) into the project, each
    marked with its batch (``data.batch``: ``round-NNN``, ``round-NNN regions``, a Data Manager
    column); a batch the project already holds is not imported again, so waiting on the same
    round twice (a rerun, an interrupted wait) asks nothing twice. Re-checks written as plain
    tasks (the model's suggestion under ``model_version: "human"``, no note) are made honest first
    (``labelstudio.honest_rechecks``). Returns how many tasks were imported now."""
    n = 0
    held = None
    for suffix, batch in ((".tasks.json", f"round-{round_no:03d}"), (".regions.tasks.json",
                                                                     f"round-{round_no:03d} regions")):
        path = ws.review / f"round-{round_no:03d}{suffix}"
        if not path.is_file():
            continue
        tasks = json.loads(path.read_text(encoding="utf-8"))
        if not tasks:
            continue
        if held is None:
            held = {t.get("data", {}).get("batch") for t in client.tasks(project)}
        if batch in held:
            log.info("Label Studio: project %s already holds batch %s; not imported again", project, batch)
            continue
        if suffix == ".tasks.json":
            tasks = _honest(ws, round_no, tasks)
        n += client.import_tasks(project, [_preselected({**t, "data": {**t["data"], "batch": batch}}) for t in tasks])
    if n:
        _preselect_in(client, project)
    return n


# Label Studio pre-selects only the predictions whose model_version is the project's, which its
# first import fixes: round 2's labeler (another version) would show nothing pre-selected. Every
# task coldstart puts into a project carries one version; the one that made the suggestion (a
# labeler id, or "human-label" for a re-check) is in the task's data, a Data Manager column.
PRESELECT_VERSION = "coldstart"


def _preselected(task: dict) -> dict:
    preds = task.get("predictions") or []
    if not preds:
        return task
    data = {**task["data"], "suggested_by": preds[0].get("model_version", "")}
    return {**task, "data": data, "predictions": [{**p, "model_version": PRESELECT_VERSION} for p in preds]}


def _preselect_in(client, project: int) -> None:
    """Make the project pre-select coldstart's suggestions (its model_version), if it does not."""
    if client.call("GET", f"/api/projects/{project}").get("model_version") != PRESELECT_VERSION:
        client.call("PATCH", f"/api/projects/{project}", json={"model_version": PRESELECT_VERSION})


def latest_batch(ws: Workspace) -> int | None:
    """The latest round with a review batch (``round-NNN.batch.csv`` with rows), or None: what
    ``round --wait`` waits on when there is nothing new for a round (its batch is still open)."""
    for round_no in reversed(ws.round_tags()):
        path = ws.review / f"round-{round_no:03d}.batch.csv"
        if path.is_file() and read_csv(path):
            return round_no
    return None


def _honest(ws: Workspace, round_no: int, tasks: list) -> list:

    batch = read_csv(ws.review / f"round-{round_no:03d}.batch.csv")
    if not any(b.get("purpose") == "recheck" for b in batch):
        return tasks
    return labelstudio.honest_rechecks(tasks, batch, human_labels(read_events(ws)))


def fetch_answers(ws: Workspace, client, project: int, annotators=None) -> int:
    """Every annotation of the project into the spool (each version once), its annotator named
    by email (``annotators``: a ``labelstudio.Annotators``; default: this server's users);
    returns how many were new."""
    annotators = annotators if annotators is not None else Annotators(client.user_emails)
    new = 0
    for task in json.loads(client.export(project, "JSON")):
        for ann in task.get("annotations") or []:
            if isinstance(ann, dict):
                new += not spool_annotation(ws, "ANNOTATION_UPDATED", annotators.named(ann),
                                            {"id": task.get("id"), "data": task.get("data")})[2]
    return new


def answered(ws: Workspace, batch: set[str], round_no: int) -> int:
    """How many of the batch's images have a human answer taken in after round ``round_no`` (the
    round that handed the batch out; later answers are events of a later round). A label from
    before, which is what puts a re-check in the batch, is not an answer to it."""
    return sum(1 for (image_id, region), e in current_answers(read_events(ws)).items()
               if not region and image_id in batch and e.round > round_no)


def wait_for_answers(ws: Workspace, round_no: int, *, answers: int | None = None, timeout_min: float | None = None,
                     poll_s: float | None = None, sleep=time.sleep, found=None) -> Waited:
    """Push round ``round_no``'s batch to Label Studio (if configured; ``found``: the round
    command's ``labelstudio.preflight``, else it is run here first) and take answers in until
    enough of its images have new answers or the time is up. Answers are imported as they come
    (the spool and the inbox, under the workspace lock), so nothing waits for the next round to
    be safe."""
    params = ws.params()
    cfg = params.labelstudio
    rows = read_csv(ws.review / f"round-{round_no:03d}.batch.csv")
    batch = {r["image_id"] for r in rows}
    rechecks = len({r["image_id"] for r in rows if r.get("purpose") == "recheck"})
    wanted = min(answers or cfg.wait_answers or len(batch), len(batch))
    timeout = 60 * (timeout_min if timeout_min is not None else cfg.wait_timeout_min)
    poll = poll_s if poll_s is not None else cfg.poll_s
    client, project = label_studio(ws, found)
    annotators = Annotators(client.user_emails) if client is not None else None
    pushed = push_batch(ws, round_no, client, project) if client is not None else 0
    if client is not None:
        log.info("Label Studio: %d task(s) of round %d imported into project %s", pushed, round_no, project)
    t0 = time.monotonic()
    got = answered(ws, batch, round_no)
    while got < wanted:
        if time.monotonic() - t0 >= timeout:
            return Waited(len(batch), wanted, got, time.monotonic() - t0, pushed, project, timed_out=True,
                          rechecks=rechecks)
        sleep(poll)
        if client is not None:
            fetch_answers(ws, client, project, annotators)
        try:
            with ws.lock():
                took = take_in(ws, Context(params, round_no + 1))
            for problem in took.problems:  # a person has to act on them: once each, as they come
                log.warning("REJECTED %s", problem)
        except WorkspaceError:
            continue  # someone else's intake or round holds the workspace: try again next poll
        got = answered(ws, batch, round_no)
        log.info("round %d: %d of %d answers in (waiting for %d)", round_no, got, len(batch), wanted)
    return Waited(len(batch), wanted, got, time.monotonic() - t0, pushed, project, rechecks=rechecks)
