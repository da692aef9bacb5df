"""The round report from real rounds (Prefect flow, MLflow, DVC; tiny model) with Chinese class
names: each round writes and versions its page and logs it to MLflow, `coldstart report` writes
the same bytes again, the stage alone writes only its folder, and headless Chromium renders it
(every section, every thumbnail decoded, no console error, the class names as text), and a page
whose class is named like a script tag."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from coldstart.flows.cli import main as cli
from coldstart.flows.round import labeling_round
from coldstart.tasks.demodata import DIGITS, answer_batch, write_digits
from coldstart.tasks.reportpage import SECTIONS
from coldstart.tasks.version import init_workspace
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow

CHINESE = "零 手写"
RENAMED = {"zero": CHINESE, "one": "壹"}
# MLflow refuses parameter names beyond [\w/.- :], and params.yaml's ontology is logged as
# parameters: a class named like a script tag is tried on a page rendered from report data.
SCRIPT = "<script>alert('x')</script>"


def _params() -> str:
    """The tiny digits workspace, two classes renamed (a YAML key in double quotes)."""
    text = tiny_params(8)
    for old, new in RENAMED.items():
        assert f"    {old}: [" in text
        text = text.replace(f"    {old}: [", f"    {json.dumps(new, ensure_ascii=False)}: [")
    return text


@pytest.fixture(scope="module")
def rounds(prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    ws = init_workspace(tmp / "ws", params_text=_params())
    truth = {p: RENAMED.get(c, c) for p, c in write_digits(ws.images, n=48, size=64).items()}
    assert set(truth.values()) <= {RENAMED.get(d, d) for d in DIGITS}
    records = []
    for r in (1, 2, 3):
        records.append(labeling_round(workspace=str(ws.root)))
        if r < 3:
            answer_batch(ws.root / records[-1].select.files[0], truth, ws.inbox)
    return SimpleNamespace(ws=ws, records=records, tmp=tmp)


def test_each_round_writes_versions_and_logs_its_report(rounds):
    from dvc.api import DVCFileSystem
    from mlflow.tracking import MlflowClient

    ws = rounds.ws
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow.db'}")
    for rec in rounds.records:
        rel = f"data/reports/round-{rec.round:03d}.html"
        assert rec.report.path == rel and not rec.report.error
        page = (ws.root / rel).read_bytes()
        assert rec.report.bytes == len(page) < 3_000_000 and rec.report.thumbnails > 0
        # versioned with the round (git or DVC, whichever dvc.yaml says), logged with its MLflow run
        assert DVCFileSystem(str(ws.root), rev=rec.tag).read_bytes(rel) == page
        logged = {a.path for a in client.list_artifacts(rec.run_id)}
        assert f"round-{rec.round:03d}.html" in logged
        assert f"report      {rel}" in rec.describe()
        html = page.decode("utf-8")
        assert all(f'<section id="{key}">' in html for key in SECTIONS)
        assert CHINESE in html and "壹" in html and "<script" not in html.lower()
    third = (ws.root / "data/reports/round-003.html").read_text(encoding="utf-8")
    assert "Review batch" in third and "data/review/round-003.csv" in third
    assert third.count("<tr><td>") >= 3  # the learning curve's rounds, the economics, ...


def test_coldstart_report_writes_the_same_page_again(rounds, capsys):
    """From the saved record and the files, any round: byte for byte what the round wrote."""
    ws = rounds.ws
    for n in (3, 2, 1):
        written = (ws.root / f"data/reports/round-{n:03d}.html").read_bytes()
        out = rounds.tmp / f"again-{n}.html"
        assert cli(["report", "-w", str(ws.root), "--round", str(n), "--out", str(out)]) == 0
        assert out.read_bytes() == written, f"round {n}"
    assert cli(["report", "-w", str(ws.root)]) == 0
    assert "round 3's report: " in capsys.readouterr().out
    assert cli(["report", "-w", str(ws.root), "--round", "7"]) == 2
    assert "there is no round 7" in capsys.readouterr().err


def test_the_report_stage_alone_writes_only_its_folder(rounds):
    """`coldstart stage report` (what dvc repro runs) writes data/reports/round-NNN.html for the
    round being made, and nothing else."""
    copy = rounds.tmp / "stage"
    shutil.copytree(rounds.ws.root, copy, symlinks=True)

    def snapshot():
        return {p.relative_to(copy).as_posix(): p.stat().st_mtime_ns for p in (copy / "data").rglob("*") if p.is_file()}

    before = snapshot()
    assert cli(["stage", "report", "-w", str(copy)]) == 0
    after = snapshot()
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed == {"data/reports/round-004.html"}


# --- in a real browser ----------------------------------------------------------------------------

CHECK = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return JSON.stringify({
    sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    scripts: document.scripts.length,
    labels: [...document.querySelectorAll('[data-label]')].map(e => e.dataset.label),
    headings: [...document.querySelectorAll('h3')].map(e => e.textContent),
    text: document.body.innerText,
  });
})()"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


NO_BROWSER = ("no chromium (Debian: apt-get install -y chromium)" if chromium() is None else
              "no websockets package (the DevTools protocol client)" if importlib.util.find_spec("websockets") is None
              else "")


def render_in_chromium(page: Path, screenshot: Path | None = None, *, width: int = 1280, height: int = 2400,
                       timeout: float = 60.0) -> dict:
    """Open ``page`` in headless Chromium over the DevTools protocol; return what CHECK finds, plus
    ``errors``: every console error or warning, uncaught exception and browser log error (failed
    loads, Content-Security-Policy violations). ``screenshot``: the first ``height`` pixels as PNG."""
    from websockets.sync.client import connect

    # Chromium's helper processes may still write to the profile for a moment after the browser
    # exits: they are stopped with it (its own process group), and a late file is no failure.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                                 "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
                                 f"--window-size={width},{height}", "--no-first-run", "--no-default-browser-check",
                                 "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            port_file, t0 = Path(profile) / "DevToolsActivePort", time.monotonic()
            while not (port_file.is_file() and port_file.read_text().strip()):
                assert proc.poll() is None and time.monotonic() - t0 < timeout, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                target = next(t for t in json.load(r) if t["type"] == "page")
            errors: list[str] = []
            loaded: list[bool] = []

            def note(msg: dict) -> None:
                method, p = msg.get("method"), msg.get("params", {})
                if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                    errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
                elif method == "Runtime.exceptionThrown":
                    errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
                elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                    errors.append(f"{p['entry']['source']}: {p['entry']['text']}")
                elif method == "Page.loadEventFired":
                    loaded.append(True)

            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as conn:
                ids = iter(range(1, 1_000_000))

                def call(method: str, **params) -> dict:
                    n = next(ids)
                    conn.send(json.dumps({"id": n, "method": method, "params": params}))
                    while True:
                        msg = json.loads(conn.recv(timeout=timeout))
                        note(msg)
                        if msg.get("id") == n:
                            assert "error" not in msg, f"{method}: {msg['error']}"
                            return msg["result"]

                for domain in ("Page", "Runtime", "Log"):
                    call(f"{domain}.enable")
                call("Page.navigate", url=page.resolve().as_uri())
                while not loaded:
                    note(json.loads(conn.recv(timeout=timeout)))
                found = json.loads(call("Runtime.evaluate", expression=CHECK, awaitPromise=True,
                                        returnByValue=True)["result"]["value"])
                if screenshot is not None:
                    shot = call("Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                try:  # messages that come late
                    while True:
                        note(json.loads(conn.recv(timeout=0.5)))
                except TimeoutError:
                    pass
            return {**found, "errors": errors}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER)
def test_the_report_renders_in_headless_chromium(rounds, tmp_path):
    page = rounds.ws.root / "data/reports/round-003.html"
    shot = tmp_path / "report.png"
    found = render_in_chromium(page, shot)
    assert found["errors"] == []
    assert found["sections"] == list(SECTIONS)
    assert found["images"] > 10 and found["broken"] == [] and found["scripts"] == 0
    # class names render as text, exactly as named
    assert CHINESE in found["labels"] and "壹" in found["labels"] and CHINESE in found["headings"]
    for title in SECTIONS.values():
        assert title in found["text"]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size[0] == 1280 and img.size[1] > 1000


@pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER)
def test_a_class_named_like_a_script_tag_renders_as_text_in_chromium(tmp_path):
    from coldstart.tasks.report import render_report
    from tests.tasks.test_report import CHINESE as CHINESE_2
    from tests.tasks.test_report import SCRIPT as SCRIPT_2
    from tests.tasks.test_report import audit, make_data

    data = make_data(tmp_path, audit=audit({SCRIPT_2: [1, 2], CHINESE_2: [2, 2]}))
    page, thumbs = render_report(data, tmp_path / "images")
    (tmp_path / "page.html").write_text(page, encoding="utf-8")
    found = render_in_chromium(tmp_path / "page.html")
    assert found["errors"] == [] and found["scripts"] == 0 and found["sections"] == list(SECTIONS)
    assert found["images"] == thumbs.count and found["broken"] == []
    assert SCRIPT_2 in found["labels"] and SCRIPT_2 in found["headings"] and SCRIPT_2 in found["text"]
    assert CHINESE_2 in found["labels"] and CHINESE_2 in found["headings"]
