"""version: workspace creation, and each round's DVC commit + push, git commit and tag.

The only module that calls git or DVC. DVC runs through its Python API, one ``Repo`` per
operation (a long-lived one goes stale when the cache changes behind it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from coldstart.tasks.errors import VersioningError, WorkspaceError
from coldstart.tasks.result import StageResult
from coldstart.tasks.workspace import Workspace, atomic_write_text

log = logging.getLogger(__name__)

TEMPLATE_FILES = {"params.yaml": "params.yaml", "dvc.yaml": "dvc.yaml", "gitignore": ".gitignore",
                  "dvcignore": ".dvcignore"}
DATA_DIRS = ["images", "inbox", "labels", "store", "review", "models", "metrics"]


@dataclass
class VersionResult(StageResult):
    commit: str  # the git commit holding this round's dvc.lock, .dvc files and records
    tag: str  # round-NNN
    images_added: bool = True  # whether data/images changed since the last round, so DVC hashed it


def tree_digest(folder: Path) -> str:
    """sha256 of every file's (path, size, mtime) under ``folder``: changes when any file is
    added, removed, replaced or touched. One stat per file; no file is read. Hidden files count
    too (unlike the scan stage's walk), because DVC tracks them."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), folder)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def git(root: Path, *args: str, check: bool = True) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise VersioningError("git is not installed; coldstart workspaces are git repositories") from e
    if check and proc.returncode != 0:
        raise VersioningError(f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def template_text(name: str) -> str:
    return resources.files("coldstart.flows").joinpath("template", name).read_text(encoding="utf-8")


def _declared(dvc_yaml: dict) -> dict[str, list[str]]:
    """Stage name -> its declared outputs, from a parsed dvc.yaml."""
    return {name: sorted(next(iter(o)) if isinstance(o, dict) else o for o in (stage or {}).get("outs", []))
            for name, stage in (dvc_yaml.get("stages") or {}).items()}


def check_stages(ws: Workspace) -> None:
    """Refuse a workspace whose dvc.yaml declares other outputs for coldstart's stages than this
    version writes (a workspace made by an older coldstart): `dvc commit` would record stale files.
    Stages of the user's own are left alone."""
    import yaml

    path = ws.root / "dvc.yaml"
    try:
        mine = _declared(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as e:
        raise WorkspaceError(f"{path}: unreadable ({e}); restore it from git (`git checkout dvc.yaml`)") from e
    wanted = _declared(yaml.safe_load(template_text("dvc.yaml")))
    stale = [name for name, outs in wanted.items() if mine.get(name) != outs]
    if stale:
        template = resources.files("coldstart.flows").joinpath("template", "dvc.yaml")
        raise WorkspaceError(
            f"{path} declares other outputs for the stage(s) {', '.join(stale)} than this version of coldstart "
            f"writes (it was made by an older version). Replace it with the current one: cp {template} {path} "
            f"(then re-add any stages of your own), and commit it.")


def init_workspace(dest: str | os.PathLike, *, remote: str | os.PathLike | None = None,
                   params_text: str | None = None) -> Workspace:
    """Create a workspace: files from the template, git init, dvc init, a local DVC remote."""
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # its hints talk about its own CLI
    root = Path(dest).expanduser().resolve()
    if (root / "params.yaml").exists() or (root / ".dvc").exists():
        raise WorkspaceError(f"{root} already holds a workspace (params.yaml or .dvc/ exists); use it as it is")
    root.mkdir(parents=True, exist_ok=True)
    for src, dst in TEMPLATE_FILES.items():
        (root / dst).write_text(params_text if (src == "params.yaml" and params_text) else template_text(src),
                                encoding="utf-8")
    for d in DATA_DIRS:
        (root / "data" / d).mkdir(parents=True, exist_ok=True)
    (root / "data" / "inbox" / ".gitkeep").touch()
    remote_dir = Path(remote).expanduser().resolve() if remote else root / ".dvc-remote"
    remote_dir.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        git(root, "init", "-q", "-b", "main")
    # Commits need an identity; CI machines often have none. Set one locally only if missing.
    if not git(root, "config", "user.email", check=False):
        git(root, "config", "user.email", "coldstart@localhost")
        git(root, "config", "user.name", "coldstart")
    Repo.init(str(root))
    with contextlib.chdir(root), Repo(str(root)) as repo:
        with repo.config.edit() as conf:
            conf["core"]["remote"] = "local"
            conf["core"]["analytics"] = "false"
            # Hardlinks, not copies, between the workspace and the cache (copy where the file
            # system cannot link): adding 20,000 images took 3 s instead of 16 s here, and the
            # images take their disk space once. DVC makes linked files read-only, which keeps
            # an edit in place from corrupting the cache: replace an image, do not edit it.
            conf["cache"]["type"] = "hardlink,copy"
            conf["remote"]["local"] = {"url": str(remote_dir)}
        repo.add(str(root / "data" / "images"))
    # The remote config is committed before any round tag: `dvc fetch` at a tag reads that
    # tag's own .dvc/config.
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "coldstart: new workspace")
    return Workspace(root)


def version(ws: Workspace, round_no: int, message: str) -> VersionResult:
    """The version stage: dvc add images, commit every stage, push; git commit; tag ``round-NNN``."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    tag = f"round-{round_no:03d}"
    logging.getLogger("dvc").setLevel(logging.ERROR)  # its hints talk about its own CLI
    # `dvc add data/images` walks, stats and checks every image; when no file there changed since
    # the last versioned round (our own stat walk says so, far cheaper), images.dvc is current
    # and its objects are on the remote: add nothing, push only the stages' outputs.
    # The scan stage depends on data/images and on params `scan`: either changed, commit it too.
    images = tree_digest(ws.images) + " " + json.dumps(ws.params().scan.model_dump(), sort_keys=True)
    marker = ws.state_dir / "versioned-images"
    images_changed = not marker.is_file() or marker.read_text(encoding="utf-8") != images
    try:
        # DVC's API resolves some targets against the process's cwd: work from the root.
        with contextlib.chdir(ws.root):
            if images_changed:
                with Repo(str(ws.root)) as repo:
                    repo.add(str(ws.images))
            with Repo(str(ws.root)) as repo:
                if images_changed:
                    repo.commit(force=True)
                else:  # the scan stage's dependency is data/images: unchanged, its lock entry holds
                    for stage in repo.index.stages:
                        if stage.cmd and stage.name != "scan":
                            repo.commit(f"dvc.yaml:{stage.name}", force=True)
            with Repo(str(ws.root)) as repo:
                pushed = repo.push() if images_changed else repo.push(targets=["dvc.yaml"])
        log.info("dvc push: %s object(s) sent to the remote", pushed)
    except DvcException as e:
        hint = ("add the missing section to params.yaml (dvc.yaml declares it as a parameter)"
                if "missing from" in str(e) else "check the DVC remote with `dvc remote list` and `dvc push`")
        raise VersioningError(
            f"DVC could not record round {round_no}: {str(e).rstrip('.')}. The round's data is intact in data/, "
            f"but it was not tagged; {hint}, then run the next round, which records it."
        ) from e
    git(ws.root, "add", "-A")
    if git(ws.root, "status", "--porcelain"):
        git(ws.root, "commit", "-q", "-m", message)
    else:
        git(ws.root, "commit", "-q", "--allow-empty", "-m", message)
    git(ws.root, "tag", "-a", tag, "-m", message)
    atomic_write_text(marker, images)  # only now: the images are committed, pushed and tagged
    return VersionResult(git(ws.root, "rev-parse", "HEAD"), tag, images_changed)


@task(name="version", cache_policy=NO_CACHE)
def version_task(ws: Workspace, round_no: int, message: str) -> VersionResult:
    return version(ws, round_no, message)

