import json
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import httpx
import pytest

from coldstart.tasks import labelstudio
from coldstart.tasks.errors import ConfigError, LabelFileError
from coldstart.tasks.labelstudio import (
    Annotators,
    export_tasks,
    honest_rechecks,
    label_config,
    parse_export,
    preflight,
    project_title,
    review_tasks,
    task,
    tasks_json,
)
from coldstart.tasks.lsclient import LabelStudioError

ID = "ab" * 32


def _annotation(config: ET.Element, label: str, who, cancelled: bool = False) -> dict:
    """An answer as Label Studio stores it, addressed by the names in the labeling config."""
    choices = config.find("Choices")
    return {"id": 3, "completed_by": who, "was_cancelled": cancelled, "lead_time": 2.5, "result": [
        {"id": "x1", "from_name": choices.get("name"), "to_name": choices.get("toName"), "type": "choices",
         "origin": "prediction-changed", "value": {"choices": [label]}}]}


def test_an_exported_task_annotated_in_label_studio_comes_back_as_the_same_image_and_label():
    config = ET.fromstring(label_config(["cat", "划痕"]))
    exported = json.loads(tasks_json([task(ID, "图片/d 1.jpg", "cat", 0.61, "model-abc")]))
    # The pre-annotation addresses the config's controls, and the image control shows the exported URL.
    prediction = exported[0]["predictions"][0]["result"][0]
    choices, image = config.find("Choices"), config.find("Image")
    assert (prediction["from_name"], prediction["to_name"]) == (choices.get("name"), choices.get("toName"))
    assert prediction["value"] == {"choices": ["cat"]} and choices.get("toName") == image.get("name")
    assert exported[0]["data"][image.get("value").removeprefix("$")] == "/data/local-files/?d=images/图片/d 1.jpg"
    # Label Studio exports the task as imported, plus an id and the annotations.
    ls_export = [dict(exported[0], id=41, annotations=[_annotation(config, "划痕", {"id": 1, "email": "ann@x"})])]
    rows, problems = parse_export(json.dumps(ls_export, ensure_ascii=False), "export.json")
    assert problems == []
    assert rows == [("task 1 (id 41)",
                     {"image_id": ID, "path": "图片/d 1.jpg", "label": "划痕", "annotator": "ann@x"})]


def test_the_image_url_alone_is_enough_to_find_the_path():
    url = labelstudio.LOCAL_FILES_PREFIX + "sub/c.jpg"
    rows, _ = parse_export(json.dumps([{"id": 1, "data": {"image": url}}]), "e")
    assert rows == [("task 1 (id 1)", {"image_id": "", "path": "sub/c.jpg", "label": "", "annotator": ""})]


def test_label_config_escapes_class_names():
    classes = ['say "hi"', "R&D", "划痕", 'it\'s "<odd>"']
    text = label_config(classes)
    assert text.splitlines()[4:8] == [
        """    <Choice value='say "hi"'/>""", '    <Choice value="R&amp;D"/>', '    <Choice value="划痕"/>',
        '    <Choice value="it\'s &quot;&lt;odd&gt;&quot;"/>']
    root = ET.fromstring(text)
    assert [c.get("value") for c in root.iter("Choice")] == [*classes, "unknown"]  # none of these: last
    choices, image = root.find("Choices"), root.find("Image")
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == (labelstudio.LABEL, image.get("name"),
                                                                                  "single")


def test_import_problems_are_named_by_task():
    config = ET.fromstring(label_config(["cat", "dog"]))
    several = _annotation(config, "cat", {"id": 9})
    several["result"][0]["value"]["choices"] = ["cat", "dog"]
    other = _annotation(config, "blurry", 5)
    other["result"][0]["from_name"] = "quality"
    export = [
        {"id": 7, "data": {"path": "a.jpg"}, "annotations": [_annotation(config, "cat", {"email": "x@y"}),
                                                             _annotation(config, "dog", {"email": "z@y"})]},
        {"id": 8, "data": {"path": "b.jpg"}, "annotations": [several]},
        {"id": 9, "data": {"path": "c.jpg"}, "annotations": [other]},
        {"id": 10, "data": {"path": "d.jpg"}, "annotations": [_annotation(config, "dog", 5, cancelled=True),
                                                              _annotation(config, "cat", 6)]},
        "not a task",
    ]
    rows, problems = parse_export(json.dumps(export), "e.json")
    assert problems == [
        "task 1 (id 7): annotators disagree (cat, dog); settle it in Label Studio and export again",
        "task 2 (id 8): one annotation chose several labels ['cat', 'dog']; pick one",
        "task 3 (id 9): the choices come from control(s) quality, not 'label'; set the project up with "
        "coldstart's label_config.xml",
        "task 5: not a task object with 'data' (it is a string)",
    ]
    # The cancelled answer is skipped; a bare completed_by id is the annotator.
    assert rows[-1] == ("task 4 (id 10)", {"image_id": "", "path": "d.jpg", "label": "cat", "annotator": "ls-user-6"})  # a bare id says nothing


@pytest.mark.parametrize("text, message", [
    ('{"tasks": []}', "expected a Label Studio JSON export: a list of tasks, not an object"),
    ("[{", "not a readable JSON file: Expecting property name enclosed in double quotes: line 1 column 3 (char 2)"),
])
def test_a_file_that_is_not_an_export_is_rejected_whole(text, message):
    with pytest.raises(LabelFileError) as e:
        parse_export(text, "data/inbox/x.json")
    assert e.value.path == "data/inbox/x.json" and e.value.problems == [message]


# --- re-checks: why the image is asked again, and whose label is pre-selected ---------------------

def _batch_row(image_id, purpose, label, p, **kw):
    return {"image_id": image_id, "image": f"{image_id}.jpg", "purpose": purpose, "predicted_label": label,
            "confidence": str(p), "source": kw.get("source", "model"), "model_id": kw.get("model_id", "round-002/m"),
            "score": "", "round": 2, "note": kw.get("note", "")}


def test_a_recheck_says_why_it_is_asked_and_preselects_the_persons_label_named_as_such():
    config = ET.fromstring(label_config(["cat", "dog"]))
    batch = [_batch_row("a", "uncertainty", "cat", 0.55),
             # select's re-check row: the model's disputing suggestion, source "human", no model id
             _batch_row("b", "recheck", "dog", 0.91, source="human", model_id="",
                        note="please check: labeled 'cat', the model (held out) says 'dog' with p=0.91")]
    plain, recheck = review_tasks(batch, human={"b": "cat"})
    assert plain == task("a", "a.jpg", "cat", 0.55, "round-002/m")
    [pred] = recheck["predictions"]
    assert pred["model_version"] == labelstudio.HUMAN_LABEL_VERSION == "human-label"
    assert pred["result"][0]["value"] == {"choices": ["cat"]}  # what the person said, not the model's "dog"
    assert pred["score"] == pytest.approx(0.09)  # disputed: sorts first by prediction score
    data = recheck["data"]
    assert (data["purpose"], data["human_label"], data["model_suggestion"]) == ("recheck", "cat", "dog")
    assert "'cat'" in data["note"] and "'dog'" in data["note"] and "p=0.91" in data["note"]
    # The config shows the note above the choices (an empty header for tasks without one).
    header = config.find("Header")
    assert header.get("value") == "$" + labelstudio.NOTE and "note" not in plain["data"]
    # Without the person's label, the model's suggestion is pre-selected, named as the model's.
    [unknown] = review_tasks(batch[1:])
    assert unknown["predictions"][0]["model_version"] == labelstudio.DISPUTING_MODEL_VERSION
    assert unknown["predictions"][0]["result"][0]["value"] == {"choices": ["dog"]}
    assert unknown["data"]["note"].startswith("please check: labeled 'cat'")
    # Nothing is ever labeled "human" while showing a model's suggestion.
    assert all(p["model_version"] != "human" for t in (plain, recheck, unknown) for p in t["predictions"])


def test_rechecks_written_by_an_older_coldstart_are_made_honest_keeping_their_url():
    batch = [_batch_row("a", "uncertainty", "cat", 0.55),
             _batch_row("b", "recheck", "dog", 0.8, source="human", model_id="")]
    old = [task("a", "a.jpg", "cat", 0.55, "round-002/m", "http://api/images/a?sig=1"),
           task("b", "b.jpg", "dog", 0.8, "human", "http://api/images/b?sig=2")]  # the old, dishonest one
    fixed = honest_rechecks(old, batch, {"b": "cat"})
    assert fixed[0] == old[0]
    assert fixed[1]["data"]["image"] == "http://api/images/b?sig=2" and fixed[1]["data"]["purpose"] == "recheck"
    assert fixed[1]["predictions"][0]["model_version"] == "human-label"
    assert fixed[1]["predictions"][0]["result"][0]["value"] == {"choices": ["cat"]}
    assert honest_rechecks(fixed, batch, {"b": "cat"}) == fixed  # already honest: left alone


# --- coldstart export --format labelstudio ---------------------------------------------------------

def test_export_writes_human_labels_as_annotations_and_follows_the_image_setting():
    rows = [{"image_id": "a", "path": "x/a.jpg", "label": "cat", "source": "human", "confidence": 1.0},
            {"image_id": "b", "path": "b.jpg", "label": "dog", "source": "coldstart-tiny+probe", "confidence": 0.7}]
    human, model = export_tasks(rows)
    assert "predictions" not in human and human["annotations"][0]["result"][0]["value"] == {"choices": ["cat"]}
    assert human["annotations"][0]["was_cancelled"] is False
    assert "annotations" not in model and model["predictions"][0]["model_version"] == "coldstart-tiny+probe"
    assert human["data"]["image"] == labelstudio.LOCAL_FILES_PREFIX + "x/a.jpg"
    signed = export_tasks(rows, lambda image_id, path: f"http://api:8750/images/{image_id}?exp=1&sig=s")
    assert [t["data"]["image"] for t in signed] == ["http://api:8750/images/a?exp=1&sig=s",
                                                    "http://api:8750/images/b?exp=1&sig=s"]
    # What Label Studio exports back (the annotation as a person's) is read as that label.
    back = [dict(signed[0], id=1, annotations=[dict(signed[0]["annotations"][0], id=9, completed_by=1)])]
    rows_back, problems = parse_export(json.dumps(back), "e.json")
    assert problems == [] and rows_back[0][1]["label"] == "cat" and rows_back[0][1]["image_id"] == "a"


# --- before a live round: the title, the server, the token ----------------------------------------

@pytest.mark.parametrize("configured, folder, title", [
    (None, "parts", "parts"), (None, "ws", "coldstart ws"), (None, "", "coldstart"), (None, "x" * 60, "x" * 50),
    (None, " ab ", "coldstart ab"), ("Parts review", "ws", "Parts review"), ("  abc ", "ws", "abc"),
])
def test_the_project_title_is_one_label_studio_accepts(configured, folder, title):
    assert project_title(configured, folder) == title
    assert 3 <= len(title.strip()) <= 50


@pytest.mark.parametrize("configured", ["ws", "  a  ", "", "y" * 51])
def test_a_configured_title_label_studio_would_refuse_is_a_clear_error(configured):
    with pytest.raises(ConfigError, match="labelstudio.project .* 3 to 50 characters"):
        project_title(configured, "folder")


def _ws(tmp_path, **ls):
    from coldstart.tasks.config import parse_params

    params = parse_params({"ontology": {"classes": {"cat": ["a cat"], "dog": ["a dog"]}}, "labelstudio": ls})
    return SimpleNamespace(root=tmp_path / "ws", params=lambda: params)


def _server(status=200, users=None, projects=()):
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.headers.get("authorization") != "Token good":
            return httpx.Response(401, json={"detail": "Invalid token."})
        if request.url.path == "/api/current-user/whoami":
            return httpx.Response(status, json={"id": 1, "email": "me@example.com"})
        if request.url.path == "/api/projects":
            return httpx.Response(200, json={"results": list(projects), "next": None})
        if request.url.path == "/api/users":
            return httpx.Response(200, json=[{"id": k, "email": v} for k, v in (users or {}).items()])
        return httpx.Response(404, json={"detail": "Not found."})

    return httpx.MockTransport(handle), seen


def test_preflight_checks_title_token_and_server_before_a_round(tmp_path, monkeypatch):
    assert preflight(_ws(tmp_path)) is None  # no labelstudio.url: files only, nothing to check
    transport, seen = _server(projects=[{"id": 4, "title": "coldstart ws"}])
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "good")
    found = preflight(_ws(tmp_path, url="http://ls:8080"), transport=transport)
    assert (found.title, found.user, found.project) == ("coldstart ws", "me@example.com", 4)  # "ws" padded
    assert seen[0][:2] == ("GET", "/api/current-user/whoami")
    found.client.close()
    # A title Label Studio would refuse fails before any request.
    seen.clear()
    with pytest.raises(ConfigError, match="'ws'"):
        preflight(_ws(tmp_path, url="http://ls:8080", project="ws"), transport=transport)
    assert seen == []
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "wrong")
    with pytest.raises(LabelStudioError, match="refused the legacy token") as e:
        preflight(_ws(tmp_path, url="http://ls:8080"), transport=transport)
    assert e.value.status == 401
    monkeypatch.delenv("LABEL_STUDIO_TOKEN")
    with pytest.raises(LabelStudioError, match=r"\$LABEL_STUDIO_TOKEN is empty"):
        preflight(_ws(tmp_path, url="http://ls:8080"), transport=transport)

    def down(request):
        raise httpx.ConnectError("connection refused")

    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "good")
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio at http://ls:8080"):
        preflight(_ws(tmp_path, url="http://ls:8080"), transport=httpx.MockTransport(down))


def test_preflight_warns_when_the_image_server_does_not_answer(tmp_path, monkeypatch, caplog):
    transport, _ = _server()
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "good")
    found = preflight(_ws(tmp_path, url="http://ls:8080", images="api", api_url="http://api:8750"),
                      transport=transport)  # /health of the api answers 401 here: not coldstart api
    assert found.warnings and "does not answer at http://api:8750/health" in found.warnings[0]
    assert "coldstart api" in caplog.text
    found.client.close()


# --- who answered -----------------------------------------------------------------------------------

def test_annotators_are_named_by_email_and_by_id_when_it_cannot_be_found():
    calls = []
    now = [0.0]

    def lookup():
        calls.append(now[0])
        return {1: "ann@example.com"}

    names = Annotators(lookup, clock=lambda: now[0])
    assert names.named({"id": 5, "completed_by": 1}) == {"id": 5, "completed_by": {"id": 1,
                                                                                  "email": "ann@example.com"}}
    assert names.named({"completed_by": {"id": "1"}})["completed_by"]["email"] == "ann@example.com"
    assert names.named({"completed_by": {"id": 1, "email": "x@y"}}) == {"completed_by": {"id": 1, "email": "x@y"}}
    assert names.named({"completed_by": 7}) == {"completed_by": 7}  # unknown: kept, recorded as ls-user-7
    assert names.named({"completed_by": 8}) == {"completed_by": 8}
    assert calls == [0.0]  # the unknown id did not ask again at once
    now[0] = 61.0
    names.named({"completed_by": 8})
    assert calls == [0.0, 61.0]  # ... but after retry_s
    assert labelstudio.annotator_of(names.named({"completed_by": 1})["completed_by"]) == "ann@example.com"

    def broken():
        raise LabelStudioError("cannot reach Label Studio")

    assert Annotators(broken).named({"completed_by": 1}) == {"completed_by": 1}
    assert Annotators(None).named({"completed_by": 1}) == {"completed_by": 1}


def test_annotators_of_a_workspace_ask_its_label_studio(tmp_path, monkeypatch):
    import coldstart.tasks.lsclient as lsclient

    transport, seen = _server(users={1: "reviewer@example.com"})
    real = lsclient.LabelStudio
    monkeypatch.setattr(lsclient, "LabelStudio", lambda url, token, **kw: real(url, token, transport=transport))
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "good")
    assert Annotators.for_workspace(_ws(tmp_path, url="http://ls:8080")).email(1) == "reviewer@example.com"
    assert Annotators.for_workspace(_ws(tmp_path)).email(1) is None  # no server configured: no request
    assert [p for _, p, _ in seen] == ["/api/users"]
