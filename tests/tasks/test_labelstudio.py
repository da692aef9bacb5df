import json
import xml.etree.ElementTree as ET

import pytest

from coldstart.tasks import labelstudio
from coldstart.tasks.errors import LabelFileError
from coldstart.tasks.labelstudio import label_config, parse_export, task, tasks_json

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
    assert text.splitlines()[3:7] == [
        """    <Choice value='say "hi"'/>""", '    <Choice value="R&amp;D"/>', '    <Choice value="划痕"/>',
        '    <Choice value="it\'s &quot;&lt;odd&gt;&quot;"/>']
    root = ET.fromstring(text)
    assert [c.get("value") for c in root.iter("Choice")] == classes
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
