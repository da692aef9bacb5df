"""`coldstart round --wait`: a round, its review batch handed to people, their answers awaited,
then the next round (intake -> train -> relabel -> ...) on them.

With ``labelstudio.url`` set, the batch goes straight into the Label Studio project (created
from the ontology's labeling config the first time) as tasks with predictions, and the
project's annotations are fetched every ``labelstudio.poll_s`` seconds into the same spool the
webhook of `coldstart api` fills: each version of an annotation counts once, whichever way it
came. Without it, answers are awaited as files dropped into data/inbox/. Either way the wait
ends when ``labelstudio.wait_answers`` of the batch's images (default: all of them) have a
human label, or after ``labelstudio.wait_timeout_min``. A scheduled round (`coldstart serve`)
never waits.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.workspace import Workspace, read_csv

log = logging.getLogger(__name__)


@dataclass
class Waited:
    asked: int  # images in the batch
    wanted: int
    answered: int
    seconds: float
    pushed: int = 0  # tasks imported into Label Studio
    project: int | None = None
    timed_out: bool = False


def label_studio(ws: Workspace):
    """(client, project id) for ``labelstudio.url``, the project found by title or created with
    the workspace's labeling config; (None, None) when no server is configured."""
    params = ws.params()
    cfg = params.labelstudio
    if not cfg.url:
        return None, None
    from coldstart.tasks import labelstudio
    from coldstart.tasks.lsclient import LabelStudio, LabelStudioError

    token = os.environ.get(cfg.token_env, "").strip()
    if not token:
        raise LabelStudioError(f"labelstudio.url is set but ${cfg.token_env} is empty: export your Label Studio access "
                               f"token (Account & Settings -> Personal Access Token) as {cfg.token_env}")
    client = LabelStudio(cfg.url, token)
    title = cfg.project or ws.root.name
    project = client.find_project(title)
    if project is None:
        project = client.create_project(title, labelstudio.project_config(params.ontology,
                                                                          regions=params.regions.enabled))
        log.info("Label Studio: created project %r (id %s) at %s", title, project, cfg.url)
    return client, project


def push_batch(ws: Workspace, round_no: int, client, project: int) -> int:
    """Import round ``round_no``'s review tasks (and its region tasks) into the project."""
    n = 0
    for suffix in (".tasks.json", ".regions.tasks.json"):
        path = ws.review / f"round-{round_no:03d}{suffix}"
        if path.is_file():
            tasks = json.loads(path.read_text(encoding="utf-8"))
            if tasks:
                n += client.import_tasks(project, tasks)
    return n


def fetch_answers(ws: Workspace, client, project: int) -> int:
    """Every annotation of the project into the spool (each version once); returns how many
    were new."""
    from coldstart.tasks.intake import spool_annotation

    new = 0
    for task in json.loads(client.export(project, "JSON")):
        for ann in task.get("annotations") or []:
            if isinstance(ann, dict):
                new += not spool_annotation(ws, "ANNOTATION_UPDATED", ann, {"id": task.get("id"),
                                                                           "data": task.get("data")})[2]
    return new


def answered(ws: Workspace, batch: set[str]) -> int:
    """How many of the batch's images have a human label now."""
    from coldstart.tasks.intake import human_labels, read_events

    return len(batch & set(human_labels(read_events(ws))))


def wait_for_answers(ws: Workspace, round_no: int, *, answers: int | None = None, timeout_min: float | None = None,
                     poll_s: float | None = None, sleep=time.sleep) -> Waited:
    """Push round ``round_no``'s batch to Label Studio (if configured) and take answers in until
    enough of its images are labeled or the time is up. Answers are imported as they come (the
    spool and the inbox, under the workspace lock), so nothing waits for the next round to be
    safe."""
    from coldstart.tasks.intake import intake

    params = ws.params()
    cfg = params.labelstudio
    batch = {r["image_id"] for r in read_csv(ws.review / f"round-{round_no:03d}.batch.csv")}
    wanted = min(answers or cfg.wait_answers or len(batch), len(batch))
    timeout = 60 * (timeout_min if timeout_min is not None else cfg.wait_timeout_min)
    poll = poll_s if poll_s is not None else cfg.poll_s
    client, project = label_studio(ws)
    pushed = push_batch(ws, round_no, client, project) if client is not None else 0
    if client is not None:
        log.info("Label Studio: %d task(s) of round %d imported into project %s", pushed, round_no, project)
    t0 = time.monotonic()
    got = answered(ws, batch)
    while got < wanted:
        if time.monotonic() - t0 >= timeout:
            return Waited(len(batch), wanted, got, time.monotonic() - t0, pushed, project, timed_out=True)
        sleep(poll)
        if client is not None:
            fetch_answers(ws, client, project)
        try:
            with ws.lock():
                intake(ws, params.ontology.class_names, round_no + 1, on_error=params.intake.on_error,
                       max_file_mb=params.intake.max_file_mb)
        except WorkspaceError:
            continue  # someone else's intake or round holds the workspace: try again next poll
        got = answered(ws, batch)
        log.info("round %d: %d of %d answers in (waiting for %d)", round_no, got, len(batch), wanted)
    return Waited(len(batch), wanted, got, time.monotonic() - t0, pushed, project)
