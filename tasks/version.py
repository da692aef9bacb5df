"""version: workspace creation, and each round's DVC commit + push, git commit and tag.

The only module that calls git or DVC. DVC runs through its Python API, one ``Repo`` per
operation (a long-lived one goes stale when the cache changes behind it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet

from coldstart.tasks.commands import command
from coldstart.tasks.config import Params
from coldstart.tasks.errors import VersioningError, WorkspaceError
from coldstart.tasks.imagefiles import HashedFiles, name_problem
from coldstart.tasks.result import StageResult
from coldstart.tasks.scan import part_digests
from coldstart.tasks.workspace import Workspace, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from dvc.repo import Repo

log = logging.getLogger(__name__)

TEMPLATE_FILES = {"params.yaml": "params.yaml", "dvc.yaml": "dvc.yaml", "gitignore": ".gitignore",
                  "dvcignore": ".dvcignore"}
DATA_DIRS = ["images", "inbox", "labels", "store", "review", "models", "metrics", "reports"]
VERSIONED = "versioned-parts.json"  # in .coldstart/: the image parts (and params `scan`) the last tag versioned


@dataclass
class VersionResult(StageResult):
    commit: str  # the git commit holding this round's dvc.lock, .dvc files and records
    tag: str  # round-NNN
    images_added: bool = True  # whether any image part changed since the last round, so DVC hashed it
    parts_added: list[str] = field(default_factory=list)  # the image parts DVC (re-)added this round
    parts_removed: list[str] = field(default_factory=list)  # parts gone from data/images: .dvc file removed


PARTS_INDEX = "data/image-parts.json"  # the scan stage's dependency in dvc.yaml (see image_parts)


def git(root: Path, *args: str, check: bool = True) -> str:
    try:
        # surrogateescape: a file name that is not UTF-8 (quarantined by the scan) must not make
        # git's output undecodable.
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, encoding="utf-8",
                              errors="surrogateescape")
    except FileNotFoundError as e:
        raise VersioningError("git is not installed; coldstart workspaces are git repositories") from e
    if check and proc.returncode != 0:
        raise VersioningError(f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


CHECKPOINTS = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
# Folders the big-file guard never looks in: DVC's and coldstart's own, and the data (DVC's).
_NOT_USER_FILES = (".git/", ".dvc/", "data/", ".coldstart/", ".prefect/", "mlartifacts/", ".dvc-remote/")


def big_files(ws: Workspace, max_mb: float) -> list[Path]:
    """Files a `git add -A` must not take: model checkpoints (git-ignored by the workspace's
    .gitignore, but still to be versioned) and any other file over ``max_mb`` that git would
    add. They go to DVC instead. The data folder is DVC's already and is not looked at."""
    def listed(*args: str) -> list[str]:
        out = git(ws.root, "ls-files", "-z", *args, check=False)
        return [p for p in out.split("\0") if p and not p.startswith(_NOT_USER_FILES)]

    found = {p for p in listed("--others", "--ignored", "--exclude-standard", "--", *(f"*{e}" for e in CHECKPOINTS))}
    found |= {p[: -len(".dvc")] for p in listed("--", "*.dvc")}  # tracked so earlier: added again if changed
    for p in listed("--others", "--modified", "--exclude-standard"):
        path = ws.root / p
        if path.is_file() and not p.endswith(".dvc") and path.stat().st_size > max_mb * 2**20:
            found.add(p)
    return sorted(ws.root / p for p in found if (ws.root / p).is_file() and (ws.root / p).name != "mlflow.db")


def unversioned_images(ws: Workspace, parts: dict[str, str]) -> bool:
    """Whether the image parts differ from those the last tagged round versioned. Unlike the
    scan's own "changed" (relative to the last scan), this holds after a round that scanned new
    images was killed before its tag: the retry still has something new to record."""
    marker = ws.state_dir / VERSIONED
    try:
        before = json.loads(marker.read_text(encoding="utf-8")).get("parts", {}) if marker.is_file() else None
    except ValueError:
        before = None
    return before != parts


# params.yaml sections that say where a round runs or reports, not what it computes: editing them
# is not a reason for a new round (a Label Studio URL or token, the MLflow server, Dask workers).
NOT_ROUND_INPUTS = ("labelstudio", "tracking", "execution")


def config_changed(ws: Workspace) -> bool:
    """Whether params.yaml (its round inputs: every section but ``NOT_ROUND_INPUTS``) or dvc.yaml
    differ from the last tagged round's. Compared with the tag, not with HEAD: an attempt killed
    between its commit and its tag has committed the change, and it is still news."""
    import yaml

    tags = ws.round_tags()
    if not tags:
        return True
    tag = f"round-{tags[-1]:03d}"

    def inputs(text: str | None) -> object:
        try:
            data = yaml.safe_load(text or "") or {}
        except yaml.YAMLError:
            return text  # load_params has accepted the current file; an old one compares as text
        return {k: v for k, v in data.items() if k not in NOT_ROUND_INPUTS} if isinstance(data, dict) else data

    for name in ("params.yaml", "dvc.yaml"):
        proc = subprocess.run(["git", "show", f"{tag}:{name}"], cwd=ws.root, capture_output=True, text=True,
                              encoding="utf-8")
        then = proc.stdout if proc.returncode == 0 else None
        path = ws.root / name
        now = path.read_text(encoding="utf-8") if path.is_file() else None
        if then != now and (name == "dvc.yaml" or inputs(then) != inputs(now)):
            return True
    return False


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


# Stage outputs a person opens, edits or drops files into (review batches and their tasks JSON,
# reports, the answer files taken in, the flags and quarantine lists). DVC links every output
# into its cache (cache.type hardlink) and makes it read-only: a non-root user cannot save an
# edit, and root's edit in place rewrites the cache object under its old md5, which `dvc status
# -c` never notices. These stay plain files: one link, the umask's mode. Images stay linked
# (people replace images, they do not edit them; linking 20,000 of them takes 3 s, copying 16 s).
EDITABLE = ("data/review", "data/reports", "data/labels/imported", "data/labels/flags.csv",
            "data/store/quarantine.csv")


def release_editable(root: Path) -> int:
    """Make every file of ``EDITABLE`` that is a link into the DVC cache (or read-only) a plain
    copy of itself, keeping its modification time; return how many were copied. Its DVC hash
    is unchanged, so `dvc status` stays clean until a person edits the file."""
    copied = 0
    for rel in EDITABLE:
        top = root / rel
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in files:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and (st.st_nlink > 1 or not st.st_mode & stat.S_IWUSR):
                atomic_write_bytes(path, path.read_bytes())  # a new inode: the cache object keeps its own
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                copied += 1
    return copied


REMOTE_MARKER = "coldstart-remote.json"  # in a local remote: it has every pushed round's objects


def _local_remote(repo) -> Path | None:
    """The default remote's folder when it is a local path (None for cloud remotes)."""
    name = repo.config["core"].get("remote")
    url = repo.config["remote"].get(name, {}).get("url", "") if name else ""
    if not url or "://" in url:
        return None
    return Path(url)  # DVC resolves a relative URL against .dvc/ when it loads the config


IGNORE_BEGIN = ("# coldstart: entries of data/images that DVC must not open (special files, refused links,\n"
                "# names that are not UTF-8 or hold control characters); the scan lists each in\n"
                "# data/store/quarantine.csv. Written by each round: edit outside this block.\n")
IGNORE_END = "# coldstart: end\n"


def _ignore_pattern(rel: str) -> str:
    """A .dvcignore (gitignore syntax) pattern matching exactly data/images/``rel``; characters
    a pattern cannot hold (undecodable bytes, control characters) match as ``?``."""
    out = []
    for c in rel:
        if 0xDC80 <= ord(c) <= 0xDCFF or unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append("?")
        elif c in "\\*?[":
            out.append("\\" + c)
        else:
            out.append(c)
    pattern = "".join(out)
    if pattern.endswith(" "):
        pattern = pattern[:-1] + "\\ "
    return "/data/images/" + pattern


def dvcignore_text(root: Path, unversionable: list[str]) -> str | None:
    """The workspace's .dvcignore with coldstart's block listing ``unversionable`` (the scan's
    list, relative to data/images), or None when the file already says that. A nested
    .dvcignore in data/images would not do: the root one ignores hidden files there, that one included."""
    path = root / ".dvcignore"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = old.find(IGNORE_BEGIN), old.find(IGNORE_END)
    rest = old[:start] + old[end + len(IGNORE_END):] if 0 <= start < end else old
    block = IGNORE_BEGIN + "".join(_ignore_pattern(r) + "\n" for r in sorted(unversionable)) + IGNORE_END
    text = (rest if rest.endswith("\n") or not rest else rest + "\n") + (block if unversionable else "")
    return None if text == old else text


def _fill_local_remote(cache: Path, remote: Path) -> int:
    """Copy every object of the local cache that a local remote lacks; return how many.

    For a remote that lost earlier rounds' objects (deleted, emptied, replaced). `dvc push
    --all-tags` (DVC 3.67) misses the earlier versions of `persist: true` directory outputs
    (the manifest, the resolved labels, the review batches): `dvc status -c --all-tags` still
    lists them as new after it. A local remote has the cache's layout, so copy what is missing.
    """
    sent = 0
    for src in cache.rglob("*"):
        if not src.is_file() or src.name.endswith(".tmp"):
            continue
        dest = remote / "files" / "md5" / src.relative_to(cache)
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".coldstart.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        sent += 1
    return sent


def _own_default_remote(root: Path) -> None:
    """A workspace copied (or cloned) from another one names that one's default remote, an
    absolute path: a round here would push into the original's remote. Give it its own,
    ``.dvc-remote`` in this workspace (filled with every round's objects at this push, as a
    remote without coldstart's marker is); say so. Reads .dvc/config itself, so that the usual
    case (nothing to do) opens no DVC ``Repo``."""
    from configobj import ConfigObj  # DVC's own config reader

    conf = ConfigObj(str(root / ".dvc" / "config"))
    name = conf.get("core", {}).get("remote")
    url = conf.get(f'remote "{name}"', {}).get("url", "") if name else ""
    if not url or "://" in url:
        return
    path = (root / ".dvc" / url).resolve()  # DVC resolves a relative URL against .dvc/
    other = path.parent
    if path.name == ".dvc-remote" and other != root and (other / ".dvc").is_dir():
        from dvc.repo import Repo

        own = root / ".dvc-remote"
        log.warning("this workspace was copied from %s: its rounds now go to its own DVC remote %s, not to %s",
                    other, own, path)
        with contextlib.chdir(root), Repo(str(root)) as repo, repo.config.edit() as edit:
            edit["remote"][name]["url"] = str(own)


def init_workspace(dest: str | os.PathLike, *, remote: str | os.PathLike | None = None,
                   params_text: str | None = None) -> Workspace:
    """Create a workspace: files from the template, git init, dvc init, a local DVC remote."""
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # its hints talk about its own CLI
    root = Path(dest).expanduser().resolve()
    if (root / "params.yaml").exists() or (root / ".dvc").exists():
        raise WorkspaceError(f"{root} already holds a workspace (params.yaml or .dvc/ exists); use it as it is")
    root.mkdir(parents=True, exist_ok=True)
    for d in DATA_DIRS:
        (root / "data" / d).mkdir(parents=True, exist_ok=True)
    for src, dst in TEMPLATE_FILES.items():
        (root / dst).write_text(params_text if (src == "params.yaml" and params_text) else template_text(src),
                                encoding="utf-8")
    (root / "data" / "inbox" / ".gitkeep").touch()
    remote_dir = Path(remote).expanduser().resolve() if remote else root / ".dvc-remote"
    remote_dir.mkdir(parents=True, exist_ok=True)
    # An absolute path, so that a `git clone` of the workspace pulls from this remote; a copied
    # workspace moves to a remote of its own at its first round (_own_default_remote).
    remote_url = str(remote_dir)
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
            conf["remote"]["local"] = {"url": remote_url}
    write_parts_index(root, {})
    # The remote config is committed before any round tag: `dvc fetch` at a tag reads that
    # tag's own .dvc/config.
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "coldstart: new workspace")
    return Workspace(root)


def _targets(images: Path, part: str, skip: AbstractSet[str] = frozenset()) -> list[Path]:
    """What DVC tracks for one image part: the folder, or for "" each loose file on its own
    (except those in ``skip``: entries DVC must not open, see ScanResult.unversionable)."""
    if part:
        return [images / part]
    return sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix != ".dvc" and p.name not in skip)


def _tracked(images: Path) -> dict[str, Path]:
    """The parts DVC tracks now: each ``data/images/NAME.dvc`` -> NAME (a folder or a loose file)."""
    return {p.name[: -len(".dvc")]: p for p in images.glob("*.dvc")}


def _unignore_parts(root: Path) -> None:
    """An older workspace git-ignores the whole of data/images; the parts' .dvc files must be
    committed, so data/images/.gitignore ignores what is inside it instead. (A root pattern
    `/data/images/*` would not do: DVC then takes the folder itself for ignored and never finds
    the .dvc files in it.)"""
    gitignore = root / ".gitignore"
    lines = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.is_file() else []
    if "/data/images" in lines:
        lines.remove("/data/images")
        atomic_write_text(gitignore, "\n".join(lines) + "\n")
    atomic_write_text(root / "data" / "images" / ".gitignore", template_text("images-gitignore"))


def write_parts_index(root: Path, entries: dict[str, dict]) -> None:
    """data/image-parts.json: every image part of this round with its DVC hash, file count and
    bytes. Small and git-tracked: it is what the scan stage depends on in dvc.yaml, in place of
    the whole folder, which DVC would re-hash file by file on every commit (a million stats)."""
    text = json.dumps([{"part": k, **v} for k, v in sorted(entries.items())], indent=1, ensure_ascii=False)
    path = root / PARTS_INDEX
    if not path.is_file() or path.read_text(encoding="utf-8") != text + "\n":
        atomic_write_text(path, text + "\n")


def _parts_index(images: Path) -> dict[str, dict]:
    import yaml

    out = {}
    for name, dvcfile in _tracked(images).items():
        o = (yaml.safe_load(dvcfile.read_text(encoding="utf-8")) or {}).get("outs", [{}])[0]
        out[name] = {"dvc": f"data/images/{dvcfile.name}", "md5": o.get("md5"), "nfiles": o.get("nfiles", 1),
                     "size": o.get("size")}
    return out


def _hand_hashes_to_dvc(repo, hashed: HashedFiles) -> int:
    """Save the md5s the scan computed into DVC's own hash cache (its "state" database, keyed
    by inode, mtime and size), so that `dvc add` finds them instead of reading each new file
    again. A file whose size or mtime differs from what the scan read is left out: DVC hashes
    it itself. Returns how many were handed over."""
    from dvc_data.hashfile.hash_info import HashInfo

    items = []
    for path, size, mtime_ns, md5 in zip(hashed.paths, hashed.sizes, hashed.mtimes, hashed.md5s):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_size == size and st.st_mtime_ns == mtime_ns:
            # What DVC's LocalFileSystem.info gives for this file (its state key is built from it).
            items.append((path, HashInfo("md5", md5), {"ino": st.st_ino, "mtime": st.st_mtime, "size": st.st_size}))
    if items:
        repo.state.save_many(items, repo.fs)
    return len(items)


@dataclass
class VersionPlan:
    """What a round's version stage does, decided from the workspace's files before DVC or git
    run (``plan_version``); ``apply_version`` carries it out."""

    round: int
    message: str  # the git commit's and the tag's
    digests: dict[str, str]  # every image part's digest now
    changed: list[str]  # image parts to hash and add to DVC again
    gone: list[str]  # tracked parts deleted or emptied: their .dvc files go
    tracked: dict[str, Path]  # part -> its .dvc file, as tracked now
    skip: set[str]  # entries nothing may open (the scan's unversionable list)
    legacy: bool  # a data/images.dvc from before parts: replaced by one .dvc per part
    rescan: bool  # the scan stage's inputs (parts index, params `scan`) changed: commit it
    dvcignore: str | None  # the new .dvcignore, when its coldstart block changes
    big: list[Path]  # checkpoints and big files a user put in the workspace: DVC, not git
    scan_params: str  # params `scan` as JSON, kept with the versioned digests

    @property
    def tag(self) -> str:
        return f"round-{self.round:03d}"


def plan_version(ws: Workspace, params: Params, round_no: int, message: str, parts: dict[str, str] | None = None,
                 unversionable: list[str] | None = None) -> VersionPlan:
    """Which image parts changed since the last versioned round (``parts``: the scan's digests;
    computed here when None), which went, and what else the round must record. Reads only."""
    digests = parts if parts is not None else part_digests(ws.images)
    scan_params = json.dumps(params.scan.model_dump(), sort_keys=True)
    marker = ws.state_dir / VERSIONED
    try:
        before = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    except ValueError:
        before = {}  # unreadable: treat every part as changed (DVC's own state makes that cheap)
    old, tracked = before.get("parts", {}), _tracked(ws.images)
    changed = [p for p, d in digests.items() if old.get(p) != d or (p and p not in tracked)]
    ignore = dvcignore_text(ws.root, unversionable) if unversionable is not None else None
    if ignore is not None:
        changed = sorted(set(changed) | {r.split("/", 1)[0] if "/" in r else "" for r in unversionable or ()})
    # A folder whose own name is not UTF-8 (or holds control characters) cannot be a .dvc file's
    # name: it stays out of versioning until renamed (the scan quarantined each of its files).
    changed = [p for p in changed if not (p and name_problem(p))]
    loose = {t.name for t in _targets(ws.images, "")}
    gone = [name for name in tracked if name not in digests and name not in loose]  # deleted or emptied
    legacy = (ws.root / "data" / "images.dvc").exists()  # workspaces from before parts: one .dvc for all
    rescan = bool(changed or gone or legacy) or before.get("scan") != scan_params
    return VersionPlan(round=round_no, message=message, digests=digests,
                       changed=sorted(digests) if legacy else changed, gone=gone, tracked=tracked,
                       skip=set(unversionable or ()), legacy=legacy, rescan=rescan, dvcignore=ignore,
                       big=big_files(ws, params.versioning.git_max_file_mb), scan_params=scan_params)


def apply_version(ws: Workspace, plan: VersionPlan, hashed: HashedFiles | None = None) -> VersionResult:
    """DVC-add the changed parts, commit the stages, push; git commit; tag. The versioned
    digests are written last: a round killed before its tag is versioned again in full."""
    from dvc.exceptions import DvcException  # DVC's import takes about a second: the version stage's alone

    if plan.dvcignore is not None:
        atomic_write_text(ws.root / ".dvcignore", plan.dvcignore)
    try:
        _dvc_record(ws, plan, hashed)
    except (DvcException, OSError) as e:
        raise _versioning_error(ws, plan.round, e) from e
    _git_commit_and_tag(ws, plan)
    # Only now: the parts are committed, pushed and tagged.
    atomic_write_text(ws.state_dir / VERSIONED, json.dumps({"scan": plan.scan_params, "parts": plan.digests},
                                                                sort_keys=True))
    return VersionResult(commit=git(ws.root, "rev-parse", "HEAD"), tag=plan.tag, images_added=bool(plan.changed),
                         parts_added=sorted(plan.changed), parts_removed=sorted(plan.gone))


def _dvc_record(ws: Workspace, plan: VersionPlan, hashed: HashedFiles | None) -> None:
    """The DVC half of a round: add, commit the stages, release editable files, push. DVC's API
    resolves some targets against the process's cwd: it works from the root. One ``Repo`` per
    round: DVC re-reads its index at each locked operation."""
    from dvc.repo import Repo  # about a second to import: the version stage's alone

    logging.getLogger("dvc").setLevel(logging.ERROR)  # its hints talk about its own CLI
    _own_default_remote(ws.root)  # before the Repo below reads its remote
    with contextlib.chdir(ws.root), Repo(str(ws.root)) as repo:
        if plan.legacy:
            repo.remove(str(ws.root / "data" / "images.dvc"), outs=False)
            _unignore_parts(ws.root)
        for name in plan.gone:
            repo.remove(str(plan.tracked[name]), outs=False)
        targets = [str(t) for p in plan.changed for t in _targets(ws.images, p, plan.skip)]
        targets += [str(p) for p in plan.big]
        if targets:
            if hashed is not None:
                _hand_hashes_to_dvc(repo, hashed)
            repo.add(targets)
        write_parts_index(ws.root, _parts_index(ws.images))
        _commit_pipeline(repo, rescan=plan.rescan)
        release_editable(ws.root)  # after the commits, which link every output into the cache
        pushed = _push(ws, repo, targets, plan.round)
    log.info("dvc push: %s object(s) sent to the remote", pushed)


def _commit_pipeline(repo: Repo, rescan: bool) -> None:
    """`dvc commit --force` of dvc.yaml's stages, in one pass: one read of dvc.yaml and dvc.lock,
    one write of dvc.lock. The scan stage depends on the parts index and on params `scan`: it is
    committed only when either changed (``rescan``); its lock entry holds otherwise.

    This is DVC's own commit loop (dvc/repo/commit.py with force=True) over the stages chosen:
    ``repo.commit`` takes one target, and one call per stage re-parsed and rewrote dvc.lock each
    time (ruamel.yaml; 1.16 s against 0.3 s for a tiny workspace's 8 stages, and dvc.lock grows
    with the image parts)."""
    from dvc.repo import lock_repo  # lazy like every DVC import here (see _dvc_record)

    with lock_repo(repo):
        infos = [info for info in repo.stage.collect_granular("dvc.yaml")
                 if info.stage.cmd and (info.stage.name != "scan" or rescan)]
        for info in infos:
            info.stage.save()
            info.stage.commit(filter_info=info.filter_info)
        if infos:
            infos[0].stage.dvcfile.dump_stages([info.stage for info in infos], update_pipeline=False)


def _push(ws: Workspace, repo: Repo, targets: list[str], round_no: int) -> int:
    """Push this round's changes; to a new, emptied or replaced local remote, every round's."""
    push = [str(Path(t).with_name(Path(t).name + ".dvc")) for t in targets] + ["dvc.yaml"]
    remote_dir = _local_remote(repo)
    if remote_dir is not None and not (remote_dir / REMOTE_MARKER).is_file() and ws.round_tags():
        # Pushing only this round's changes would leave the earlier rounds' objects missing from it.
        log.warning("DVC remote %s holds no coldstart marker: sending it every round's data", remote_dir)
        pushed = _fill_local_remote(Path(repo.cache.local.path), remote_dir) + repo.push()
    else:
        pushed = repo.push(targets=push)
    if remote_dir is not None:
        atomic_write_text(remote_dir / REMOTE_MARKER, json.dumps({"workspace": str(ws.root), "round": round_no}) + "\n")
    return pushed


def _versioning_error(ws: Workspace, round_no: int, e: Exception) -> VersioningError:
    hint = ("add the missing section to params.yaml (dvc.yaml declares it as a parameter)"
            if "missing from" in str(e) else
            f"check that the DVC remote exists and is writable (`{command('dvc')} remote list`, then "
            f"`{command('dvc')} push`, in {ws.root})")
    return VersioningError(
        f"DVC could not record round {round_no}: {type(e).__name__ if isinstance(e, OSError) else ''}"
        f"{' ' if isinstance(e, OSError) else ''}{str(e).rstrip('.')}. The round's data is intact in data/, "
        f"but it was not tagged; {hint}, then run the next round, which records it and pushes what the "
        f"remote lacks."
    )


def _git_commit_and_tag(ws: Workspace, plan: VersionPlan) -> None:
    git(ws.root, "add", "-A")
    # A round killed between its commit and its tag left that commit: amend it, so that one round
    # is one commit.
    head_msg = git(ws.root, "log", "-1", "--format=%s", check=False)
    retry = head_msg.startswith(f"coldstart round {plan.round}:") and not git(ws.root, "tag", "--points-at", "HEAD")
    git(ws.root, "commit", "-q", "--allow-empty", *(["--amend"] if retry else []), "-m", plan.message)
    git(ws.root, "tag", "-a", plan.tag, "-m", plan.message)


def version(ws: Workspace, params: Params, round_no: int, message: str, parts: dict[str, str] | None = None,
            hashed: HashedFiles | None = None, unversionable: list[str] | None = None) -> VersionResult:
    """The version stage: DVC-add the image parts that changed, commit the stages, push what
    changed; git commit; tag ``round-NNN``.

    Images are versioned in parts, the way DVC's large users do it: each top-level folder of
    data/images (one per ingest batch, typically) has its own ``.dvc`` file, and each file
    directly in data/images its own. A round hashes, commits and pushes only the parts whose
    digest (``parts``, from the scan stage's walk) changed, so adding 1% new images in a new
    folder costs 1% of the images, not all of them.
    """
    return apply_version(ws, plan_version(ws, params, round_no, message, parts, unversionable), hashed)
