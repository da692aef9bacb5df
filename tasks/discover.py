"""discover: what the ontology missed. Each round clusters the images that look unlike every
written class and proposes the coherent clusters as candidate classes (data/labels/proposals.json,
shown in the report); ``coldstart discover --adopt N`` makes one a class.

Candidates are the images people answered "none of these" (``unknown``, ``new:<name>``), those the
head labels ``unknown`` (it learned the answer as an outcome), and those whose best label's
probability is below ``discover.max_confidence``. They are clustered by k-means on unit
embeddings, the number of clusters chosen by silhouette. A cluster is proposed when it has at least
``discover.min_size`` members, its members' mean cosine to its centre (its *cohesion*) is at least
``discover.min_cohesion``, and it is not a part of a written class: its centre must be further
from every class's labeled examples than its members are from it. Proposals are ranked by how many
of their members people or the head called "none of these", then by size x cohesion.

With ``regions.enabled`` the same is done for the regions (SAM masks) that got no confident
label, by their crops' embeddings: region proposals are numbered after the image proposals.

Conventions: embeddings ``(N, D)`` float32, compared by cosine (rows are normalised here).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coldstart.models.errors import ConfigError
from coldstart.tasks.config import UNKNOWN_LABEL, DiscoverConfig, Params
from coldstart.tasks.labellog import human_labels, read_events, region_answers
from coldstart.tasks.ontology import map_answers, proposed_name
from coldstart.tasks.pool import read_pool
from coldstart.tasks.regiontable import crop_store, read_regions, regions_dir
from coldstart.tasks.relabel import load_probs, read_resolved
from coldstart.tasks.result import StageResult
from coldstart.tasks.store import EmbeddingStore, cached_text_head
from coldstart.tasks.workspace import Workspace, atomic_write_text

if TYPE_CHECKING:  # torch stays out of this module: names are scored only with real weights
    from coldstart.models.clip import ClipModel

log = logging.getLogger(__name__)

MAX_CLUSTERS = 12  # k-means tries 1..MAX_CLUSTERS clusters (fewer on few candidates)
CLASS_EXAMPLES = 200  # at most this many labeled examples per class make its centre
SILHOUETTE_SAMPLE = 3000  # candidates the silhouette is computed on (it is quadratic)
# Below this for every k >= 2, the candidates are one cluster (or none): uniform noise scores
# 0.01-0.09 (300 x 512 and 60 x 32 Gaussian), the candidates of `bench discover` 0.25-0.50.
MIN_SILHOUETTE = 0.15


@dataclass
class Proposal:
    """One candidate class: a coherent cluster of images unlike every written class."""

    id: int  # 1-based, by rank: what `coldstart discover --adopt N` names
    size: int
    cohesion: float  # members' mean cosine to the centre
    nearest_class: str | None  # the written class whose labeled examples' centre is closest
    nearest_class_cosine: float | None
    unknown_answers: int  # members people answered "none of these"
    predicted_unknown: int  # members the head labels "unknown"
    members: list[str]  # image ids, most typical (closest to the centre) first
    names: list[tuple[str, float]] = field(default_factory=list)  # suggested names, best first (real weights)
    proposed_names: dict[str, int] = field(default_factory=dict)  # new:<name> answers among the members
    paths: list[str] = field(default_factory=list)  # the most typical members' paths, for people
    kind: str = "images"  # or "regions": members are region ids (SAM masks), ``boxes`` their "x0 y0 x1 y1"
    boxes: list[str] = field(default_factory=list)

    @property
    def suggested(self) -> str | None:
        """The name people proposed most (new:<name>), else the best vocabulary name, else None."""
        if self.proposed_names:
            return max(self.proposed_names.items(), key=lambda kv: (kv[1], kv[0]))[0]
        return self.names[0][0] if self.names else None


def unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def cluster(X: np.ndarray, *, min_size: int, seed: int = 0, max_clusters: int = MAX_CLUSTERS) -> np.ndarray:
    """``(N, D)`` unit rows -> ``(N,)`` cluster index: k-means with k chosen by silhouette
    (cosine), from 2 to ``max_clusters`` (at most N / min_size); one cluster when no k shows
    structure (every silhouette below MIN_SILHOUETTE)."""
    from sklearn.cluster import KMeans  # lazy: scikit-learn costs ~0.7 s to import
    from sklearn.metrics import silhouette_score

    n = len(X)
    top = min(max_clusters, n // max(min_size, 1))
    best, best_s = np.zeros(n, int), MIN_SILHOUETTE
    for k in range(2, top + 1):
        assign = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(X)
        if len(np.unique(assign)) < 2:
            continue
        s = float(silhouette_score(X, assign, metric="cosine", sample_size=min(n, SILHOUETTE_SAMPLE),
                                   random_state=seed))
        if s > best_s:
            best, best_s = assign, s
    return best


def propose(X: np.ndarray, ids: list[str], unknown_answer: np.ndarray, predicted_unknown: np.ndarray,
            class_centres: dict[str, np.ndarray], cfg: DiscoverConfig, *, center: np.ndarray | None = None,
            seed: int = 0) -> list[Proposal]:
    """Proposals from the candidates ``X`` ``(N, D)`` (their ``ids``; ``unknown_answer`` and
    ``predicted_unknown`` ``(N,)`` bool) against ``class_centres`` (class -> ``(D,)`` centre of its
    labeled examples, from ``centre_of``). ``center`` ``(D,)``: the mean of every image, taken
    off before cosines (CLIP embeddings share a large common direction; without it every pair
    looks alike). Ranked, at most ``cfg.max_proposals``."""
    if len(X) < cfg.min_size:
        return []
    U = unit(X - (0 if center is None else center))
    assign = cluster(U, min_size=cfg.min_size, seed=seed)
    names = list(class_centres)
    C = np.stack([class_centres[c] for c in names]) if names else np.zeros((0, U.shape[1]), np.float32)
    found = []
    for k in np.unique(assign):
        rows = np.flatnonzero(assign == k)
        centre = unit(U[rows].mean(0, keepdims=True))[0]
        sims = U[rows] @ centre
        cohesion = float(sims.mean())
        if len(rows) < cfg.min_size or cohesion < cfg.min_cohesion:
            continue
        near, near_cos = None, None
        if len(C):
            to_class = C @ centre
            j = int(np.argmax(to_class))
            near, near_cos = names[j], float(to_class[j])
            # As close to a class's examples as its own members are to it: a part of that class.
            if near_cos >= cohesion:
                continue
        order = rows[np.argsort(-sims, kind="stable")]
        found.append(Proposal(0, len(rows), round(cohesion, 4), near, None if near_cos is None else round(near_cos, 4),
                              int(unknown_answer[rows].sum()), int(predicted_unknown[rows].sum()),
                              [ids[i] for i in order]))
    found.sort(key=lambda p: (-(p.unknown_answers + p.predicted_unknown), -p.size * p.cohesion, p.members[0]))
    found = found[: cfg.max_proposals]
    for n, p in enumerate(found, start=1):
        p.id = n
    return found


def centre_of(X: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """``(n, D)`` examples -> ``(D,)`` unit mean of their unit rows (``center`` taken off first)."""
    return unit(unit(X - (0 if center is None else center)).mean(0, keepdims=True))[0]


def vocabulary(cfg: DiscoverConfig, family: str, root: Path) -> list[str]:
    """The names a proposal's centre is scored against: ``discover.vocabulary`` (one per line,
    relative to the workspace), else open_clip's ImageNet-1k class names (with ``model.family:
    cn_clip``, Chinese-CLIP's Chinese ImageNet names, translated by the Wukong project)."""
    if cfg.vocabulary:
        path = root / cfg.vocabulary
        if not path.is_file():
            raise ConfigError(f"discover.vocabulary: {path} is not a file; give a text file of names, one per line, "
                              f"relative to the workspace (or null for ImageNet's class names)")
        lines = path.read_text(encoding="utf-8").splitlines()
        return list(dict.fromkeys(w.strip() for w in lines if w.strip() and not w.startswith("#")))
    if family == "cn_clip":
        try:
            from cn_clip.eval.imagenet_zeroshot_templates import imagenet_classnames as zh

            return list(dict.fromkeys(zh))
        except ImportError:
            pass
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(dict.fromkeys(IMAGENET_CLASSNAMES))


def suggest_names(proposals: list[Proposal], centres: np.ndarray, words: list[str], clip: ClipModel,
                  ws: Workspace, templates: list[str], top: int = 3) -> None:
    """Each proposal's ``names``: the ``top`` words whose prompt-ensembled text embedding is
    closest to its centre (``centres`` ``(P, D)``), with the cosine. Text weights are cached."""
    if not proposals or not words:
        return
    weights, _, _ = cached_text_head(ws.text_cache, clip, [[t.format(w) for t in templates] for w in words])
    sims = unit(centres) @ unit(weights).T
    for p, row in zip(proposals, sims):
        best = np.argsort(-row, kind="stable")[:top]
        p.names = [(words[j], round(float(row[j]), 4)) for j in best]


@dataclass
class DiscoverResult(StageResult):
    candidates: int  # images clustered
    unknown_answers: int  # images people answered "none of these" (current answers)
    predicted_unknown: int  # images the head labels "unknown"
    proposals: int
    region_candidates: int = 0  # regions (SAM masks) clustered
    region_proposals: int = 0
    orphaned: dict[str, int] = field(default_factory=dict)  # answers for classes params.yaml no longer has
    proposed_names: dict[str, int] = field(default_factory=dict)  # new:<name> answers not yet a class

    def metrics(self) -> dict[str, float | None]:
        return {"discover_candidates": self.candidates, "unknown_answers": self.unknown_answers,
                "predicted_unknown": self.predicted_unknown, "proposals": self.proposals,
                "region_proposals": self.region_proposals}


def discover(ws: Workspace, params: Params, round_no: int, clip: ClipModel | None = None) -> DiscoverResult:
    """The discover stage: propose classes from this round's resolved labels and people's answers.

    Writes exactly its declared output, data/labels/proposals.json. ``clip``: the round's model,
    used to suggest names only when it has real weights (``model.pretrained`` set).
    """
    cfg, labels = params.discover, params.ontology.labels
    ids, probs, classes, (model_id, view) = load_probs(ws)
    raw = human_labels(read_events(ws))
    answers = map_answers(raw, labels)
    resolved = {r["image_id"]: r for r in read_resolved(ws)}
    is_unknown_answer = np.array([answers.labels.get(i) == UNKNOWN_LABEL for i in ids], bool)
    human = np.array([resolved[i]["source"] == "human" for i in ids], bool)
    predicted = ~human & (probs.argmax(1) == classes.index(UNKNOWN_LABEL)) if UNKNOWN_LABEL in classes \
        else np.zeros(len(ids), bool)
    low = ~human & (probs.max(1) < cfg.max_confidence) if len(ids) else np.zeros(0, bool)
    keep = np.flatnonzero(is_unknown_answer | predicted | low)
    store = EmbeddingStore(ws.embeddings, model_id, view)
    cand_ids = [ids[i] for i in keep]
    X = store.load(cand_ids)[1] if cand_ids else np.zeros((0, 1), np.float32)
    known = {i: label for i, label in answers.labels.items() if label != UNKNOWN_LABEL}
    pool = read_pool(ws, store, known)  # one pass: every image's mean, and the written classes' examples
    centres = {}
    for label in params.ontology.class_names:
        rows = [k for k, i in enumerate(pool.labeled_ids) if known[i] == label][:CLASS_EXAMPLES]
        if rows:
            centres[label] = centre_of(pool.labeled_X[rows], pool.center)
    found = propose(X, cand_ids, is_unknown_answer[keep], predicted[keep], centres, cfg, center=pool.center,
                    seed=params.train.seed)
    for p in found:
        p.proposed_names = dict(Counter(n for i in p.members if (n := proposed_name(raw.get(i, ""))) is not None))
        p.paths = [resolved[i]["path"] for i in p.members[: max(cfg.thumbnails, 1)]]
    if found and clip is not None and params.model.pretrained:
        words = vocabulary(cfg, params.model.family, ws.root)
        centres_p = np.stack([unit(store.load(p.members)[1]).mean(0) for p in found])  # raw: text lives there
        suggest_names(found, centres_p, words, clip, ws, params.ontology.templates)
    n_regions, in_regions = region_proposals(ws, params, model_id)
    for number, p in enumerate(in_regions, start=len(found) + 1):  # one numbering: `--adopt N` takes either kind
        p.id = number
    write_proposals(ws, round_no, len(keep), found + in_regions)
    return DiscoverResult(candidates=len(keep), unknown_answers=int(is_unknown_answer.sum()),
                          predicted_unknown=int(predicted.sum()), proposals=len(found), region_candidates=n_regions,
                          region_proposals=len(in_regions),
                          orphaned=dict(answers.orphaned), proposed_names=dict(answers.proposed))


def region_proposals(ws: Workspace, params: Params, model_id: str) -> tuple[int, list[Proposal]]:
    """With ``regions.enabled``: (candidates, proposals) among the regions (SAM masks, by their
    crops' embeddings) answered "none of these", labeled ``unknown`` or below
    ``discover.max_confidence``; contained regions left out (their container is the object)."""
    cfg = params.discover
    if not params.regions.enabled:
        return 0, []
    regions = {r.region_id: r for r in read_regions(regions_dir(ws), dropped=True) if r.dropped != "contained"}
    store = crop_store(ws, model_id, params.regions)
    if not regions or not len(store):
        return 0, []
    answers = map_answers({rid: e.label for rid, e in region_answers(read_events(ws)).items()},
                          params.ontology.labels).labels
    ids, X = store.load()
    live = np.array([i in regions for i in ids], bool)
    ids, X = [i for i, k in zip(ids, live) if k], X[live]
    answered = np.array([answers.get(i) == UNKNOWN_LABEL for i in ids], bool)
    auto = np.array([i not in answers for i in ids], bool)
    predicted = auto & np.array([regions[i].label == UNKNOWN_LABEL for i in ids], bool)
    low = auto & np.array([regions[i].confidence < cfg.max_confidence for i in ids], bool)
    keep = np.flatnonzero(answered | predicted | low)
    center = X.mean(0) if len(X) else None
    centres = {c: centre_of(X[rows], center) for c in params.ontology.class_names
               if len(rows := [k for k, i in enumerate(ids) if answers.get(i) == c][:CLASS_EXAMPLES])}
    found = propose(X[keep], [ids[k] for k in keep], answered[keep], predicted[keep], centres, cfg, center=center,
                    seed=params.train.seed)
    for p in found:
        top = [regions[r] for r in p.members[: max(cfg.thumbnails, 1)]]
        p.kind, p.paths = "regions", [r.path for r in top]
        p.boxes = [f"{r.bbox[0]:g} {r.bbox[1]:g} {r.bbox[0] + r.bbox[2]:g} {r.bbox[1] + r.bbox[3]:g}" for r in top]
    return len(keep), found


def write_proposals(ws: Workspace, round_no: int, candidates: int, found: list[Proposal]) -> None:
    body = {"round": round_no, "candidates": candidates, "proposals": [asdict(p) for p in found]}
    atomic_write_text(ws.proposals, json.dumps(body, indent=1, ensure_ascii=False) + "\n")


def parse_proposals(text: str) -> tuple[int, list[Proposal]]:
    """proposals.json's text -> (the round that proposed them, the proposals)."""
    body = json.loads(text)
    found = [Proposal(**{**p, "names": [tuple(n) for n in p.get("names", [])]}) for p in body["proposals"]]
    return int(body["round"]), found


def read_proposals(ws: Workspace) -> tuple[int, list[Proposal]]:
    """(the round that proposed them, the proposals) of data/labels/proposals.json; (0, []) before."""
    return parse_proposals(ws.proposals.read_text(encoding="utf-8")) if ws.proposals.is_file() else (0, [])


def reask_limit(budget: int) -> int:
    """At most this many re-asks ("none of these" answers to look at again after a class was
    adopted) go into one batch of ``budget``: half of it, so that the batch still asks new images."""
    return budget // 2
