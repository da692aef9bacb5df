"""relabel: give every current image a label: the human's where one exists, else the head's.

Everything here is vectorised over the whole pool (numpy and Arrow, no per-image Python),
because this stage touches every image every round: at a million images it must stay a few
seconds. The resolved table is Parquet parts (``data/labels/resolved/``, see
coldstart.tasks.parts): a round stores only the rows it changed, so a round with 1% new images
stores about 1% of the table; ``coldstart.read_labels(folder)`` gives the current table.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from threadpoolctl import threadpool_limits

from coldstart.models.errors import ConfigError
from coldstart.tasks.cluster import dask_runner, on_dask
from coldstart.tasks.config import ExecutionConfig, Params, ViewsConfig
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.heads import ChosenHead, current_human_labels, load_chosen
from coldstart.tasks.manifest import manifest_parts, read_manifest_table
from coldstart.tasks.parts import PartTable
from coldstart.tasks.result import IN_MEMORY, StageResult
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.views import aggregate_views
from coldstart.tasks.workspace import Workspace

# location: "x0 y0 x1 y1" (original pixels, XYXY) of the tile that gave the label's score, or "".
RESOLVED_FIELDS = ["image_id", "path", "label", "confidence", "source", "model_id", "round", "location"]


@dataclass
class RelabelResult(StageResult):
    images: int
    human: int
    auto: int
    source: str  # what labeled the auto labels: "zero-shot", "probe" or "zs-probe"
    mean_confidence: float | None  # over auto labels
    below_threshold: int  # auto labels with confidence < threshold
    threshold: float  # the auto-accept confidence the train stage chose
    churn: float | None  # fraction of images present last round whose label changed
    per_class: dict[str, int] = field(default_factory=dict)
    # (auto,) the calibrated confidence of each auto label: the audit weights its estimate to them.
    auto_confidence: np.ndarray | None = field(default=None, metadata=IN_MEMORY, compare=False)

    def metrics(self) -> dict[str, float | None]:
        return {"auto_labeled": self.auto, "below_threshold": self.below_threshold,
                "mean_confidence": self.mean_confidence, "label_churn": self.churn}


def _ids_array(raw: np.ndarray) -> pa.Array:
    """``(N,)`` S64 content ids -> Arrow fixed-size binary, zero-copy (ids are 64 hex chars)."""
    raw = np.ascontiguousarray(raw, dtype="S64")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(64), len(raw), [None, pa.py_buffer(raw)])


_HEX = np.zeros(256, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def id_keys(raw: np.ndarray) -> np.ndarray:
    """``(N,)`` S64 hex content ids -> ``(N,)`` uint64: their first 64 bits, as a hash key.

    Joins on these keys are plain integer hash joins (fast in pandas). Two different sha256
    ids sharing their first 64 bits is astronomically rare; ``lookup`` verifies the full ids
    anyway and falls back to an exact join if it ever happens.
    """
    nibbles = _HEX[np.ascontiguousarray(raw, "S64").view(np.uint8).reshape(len(raw), 64)[:, :16]]
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)


def fingerprint(raw: np.ndarray) -> str:
    """An order-sensitive digest of an ``(N,)`` S64 id sequence: equal sequences give equal
    digests, so a table's rows can be matched to another file's without reading the ids back.
    Each of the ids' eight 64-bit words is summed with odd per-position weights (mod 2^64), so a
    changed, moved, added or removed id always changes it."""
    weights = np.arange(1, 2 * len(raw) + 1, 2, dtype=np.uint64)  # odd: every position counts
    words = _words(raw)
    with np.errstate(over="ignore"):
        sums = [(words[:, j] * weights).sum(dtype=np.uint64) for j in range(8)]
    return f"{len(raw)}:" + "".join(f"{int(v):016x}" for v in sums)


FINGERPRINT = b"coldstart.ids_fingerprint"  # Parquet schema metadata of the resolved table


def _words(raw: np.ndarray) -> np.ndarray:
    """``(N,)`` S64 -> ``(N, 8)`` uint64 view: comparing ids as words is ~10x faster than as strings."""
    return np.ascontiguousarray(raw, "S64").view(np.uint64).reshape(len(raw), 8)


def lookup(raw_of: np.ndarray, raw_query: np.ndarray, query_keys: np.ndarray | None = None) -> np.ndarray:
    """``(Q,)`` row of each query id's first occurrence in ``raw_of`` (-1: absent); both S64.
    ``query_keys``: ``id_keys(raw_query)``, when the caller has them already."""
    keys_of = id_keys(raw_of)
    first = np.flatnonzero(~pd.Index(keys_of).duplicated(keep="first"))
    pos = pd.Index(keys_of[first]).get_indexer(id_keys(raw_query) if query_keys is None else query_keys)
    rows = np.where(pos >= 0, first[np.maximum(pos, 0)], -1)
    found = rows >= 0
    # Confirm on the rest of the ids, compared as 64-bit words (the key already covers their first
    # 16 hex digits). If two different ids ever shared a key, fall back to an exact join.
    if not np.array_equal(_words(raw_of)[rows[found], 2:], _words(raw_query)[found, 2:]):
        rows = pc.fill_null(pc.index_in(_ids_array(raw_query), value_set=_ids_array(raw_of)), -1).to_numpy()
    return rows


def first_occurrence(raw: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """``(N,)`` bool: True at the first row of each id (S64) in ``raw`` (``keys``: its id_keys)."""
    dup = pd.Index(id_keys(raw) if keys is None else keys).duplicated(keep="first")
    if dup.any():  # rare (an id stored twice, or a key collision): decide on the full ids
        dup = np.ones(len(raw), bool)
        dup[np.unique(raw, return_index=True)[1]] = False
    return ~dup


def current_images(ws: Workspace) -> tuple[np.ndarray, pa.Array]:
    """The manifest's content ids ``(M,)`` S64 and display paths, one row per file."""
    table = read_manifest_table(ws, ["image_id"])
    if not len(table) and not manifest_parts(ws).files():
        raise WorkspaceError(f"{ws.rel(ws.manifest)} is missing: run the scan stage first (coldstart stage scan)")
    ids, paths = table["image_id"].combine_chunks(), table["path"].combine_chunks()
    if len(ids) == 0:
        return np.zeros(0, "S64"), paths
    if pc.min_max(pc.utf8_length(ids)).as_py() != {"min": 64, "max": 64}:
        raise WorkspaceError(f"{ws.rel(ws.manifest)} has image ids that are not sha256 hex; run the scan stage again")
    return raw_ids_of(ids), paths


def raw_ids_of(ids: pa.Array) -> np.ndarray:
    """An Arrow string array of 64-character ids as ``(N,)`` S64, zero-copy (64 bytes per id)."""
    if len(ids) == 0:
        return np.zeros(0, "S64")
    _, offsets, data = ids.buffers()
    start = int(np.frombuffer(offsets, np.int32, count=1, offset=4 * ids.offset)[0])
    return np.frombuffer(data, "S64", count=len(ids), offset=start)


def score_store(store: EmbeddingStore, predict, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stream the store through ``predict`` ``(n, D) -> (n, L)``: (``(N,)`` S64 ids, ``(N, L)`` float32).

    Shards are scored by ``workers`` threads (default: one per core), each writing its rows of
    one preallocated output: reading a shard and numpy's maths release the GIL, and memory
    holds one shard per thread besides the ``(N, L)`` result.
    """
    shards = store.shards()
    offsets = np.cumsum([0] + [n for _, n in shards])
    ids = np.empty(offsets[-1], "S64")
    if not shards:
        return ids, np.zeros((0, 0), np.float32)
    out: list[np.ndarray] = []

    def score(k: int) -> None:
        raw_ids, X = store.read_shard(shards[k][0])
        p = predict(X)
        if not out:
            out.append(np.empty((offsets[-1], p.shape[1]), np.float32))
        ids[offsets[k] : offsets[k + 1]], out[0][offsets[k] : offsets[k + 1]] = raw_ids, p

    # One BLAS thread per worker: a shard times a few class rows is a skinny, memory-bound
    # product, and OpenBLAS's own threads cost more than they give there (measured 5x slower).
    with threadpool_limits(limits=1, user_api="blas"):
        score(0)  # allocates the output
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(score, range(1, len(shards))))
    return ids, out[0]


def _score_on_dask(ws: Workspace, store: EmbeddingStore, execution: ExecutionConfig) -> tuple[np.ndarray, np.ndarray]:
    """score_store on a Dask cluster: one task per store shard, results joined in shard order
    (the order score_store gives), so the table is the same as a local run's."""
    shards = [str(p) for p, _ in store.shards()]
    if not shards:
        return np.empty(0, "S64"), np.zeros((0, 0), np.float32)
    parts = score_on_cluster.with_options(task_runner=dask_runner(execution))(str(ws.root), shards)
    return np.concatenate([i for i, _ in parts]), np.concatenate([p for _, p in parts]).astype(np.float32, copy=False)


@task(name="score-shard", cache_policy=NO_CACHE, retries=1)
def score_shard_task(root: str, ids_file: str) -> tuple[np.ndarray, np.ndarray]:
    """On a worker: the chosen head (read from the shared workspace) over one store shard:
    ``(n,)`` S64 ids and ``(n, L)`` float32 probabilities."""
    chosen = load_chosen(Workspace(Path(root)))
    if chosen is None:  # the train stage's head is gone from the shared workspace
        raise WorkspaceError("data/models/ holds no trained head: run the train stage first (coldstart stage train)")
    raw_ids, X = EmbeddingStore.read_shard(Path(ids_file))
    return raw_ids, chosen.predict_proba(X).astype(np.float32, copy=False)


@flow(name="score-shards")
def score_on_cluster(root: str, shards: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sub-flow run with the Dask task runner: one score-shard task per store shard."""
    futures = score_shard_task.map(unmapped(root), shards)
    return [f.result() for f in futures]


def relabel(ws: Workspace, params: Params, round_no: int) -> RelabelResult:
    """The relabel stage: apply the head the train stage chose to every current image.

    Writes exactly its declared output, data/labels/resolved/: one row per distinct current
    image (human labels first) with the head's ``(L,)`` probabilities, human-labeled or not,
    for selection and audits; this round's part holds the rows that changed.
    """
    chosen = load_chosen(ws)
    if chosen is None:
        raise WorkspaceError("data/models/ holds no trained head: run the train stage first (coldstart stage train)")
    classes = params.ontology.labels
    if chosen.n_labels != len(classes):
        raise ConfigError("params.yaml: the ontology's labels changed since the head was trained; run the train "
                          "stage (coldstart stage train) before relabel")
    # An answer waiting to be asked again still labels its image ("unknown" until answered again).
    humans = current_human_labels(ws, classes, training=False).labels
    raw_ids, probs, keys, paths, locations = _scored(ws, params, chosen)
    label, conf, is_human = resolve(raw_ids, probs, classes, humans, keys)
    store_key = (chosen.model_id, params.views.key("global"))
    parts = resolved_parts(ws, len(classes))
    digest = fingerprint(raw_ids)
    prev = previous_rows(parts, round_no, raw_ids, digest, classes, chosen.labeler_id, store_key)
    rounds, changed, gone, churn = _changes(prev, round_no, label, conf, is_human, paths, locations, probs)
    table = resolved_table(raw_ids, paths, label, conf, is_human, classes, source=chosen.model,
                           model_id=chosen.labeler_id, rounds=rounds, locations=locations, probs=probs)
    # The ids' fingerprint, in this order: previous_rows trusts it only when the view is one base.
    meta = {CLASSES_KEY: json.dumps(classes, ensure_ascii=False), STORE_KEY: json.dumps(list(store_key)),
            FINGERPRINT.decode(): digest}
    parts.write(round_no, table.filter(pa.array(changed)), gone, lambda: table, meta)
    auto_conf = conf[~is_human]
    counts = np.bincount(label, minlength=len(classes))
    return RelabelResult(
        images=len(raw_ids), human=int(is_human.sum()), auto=len(auto_conf), source=chosen.model,
        mean_confidence=float(auto_conf.mean()) if len(auto_conf) else None,
        below_threshold=int((auto_conf < chosen.threshold).sum()), threshold=chosen.threshold, churn=churn,
        per_class={c: int(k) for c, k in zip(classes, counts) if k}, auto_confidence=auto_conf)


def _scored(ws: Workspace, params: Params, chosen: ChosenHead
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array, pa.Array | None]:
    """The chosen head over every stored embedding of a current image: (raw ids, ``(N, L)``
    probabilities, id keys, display paths, label locations or None without tiles). The store
    may hold images no longer in the manifest, or an id twice: they are left out here, so that
    the resolved table has one row per current image."""
    classes = params.ontology.labels
    store = EmbeddingStore(ws.embeddings, chosen.model_id, params.views.key("global"))
    if on_dask(params.execution):
        raw_ids, probs = _score_on_dask(ws, store, params.execution)
    else:
        raw_ids, probs = score_store(store, chosen.predict_proba)
    man_raw, man_paths = current_images(ws)
    # Each stored image's first manifest row gives its display path; images no longer in the
    # manifest (deleted or replaced) are dropped, and so is any repeat of an id in the store.
    keys = id_keys(raw_ids)
    where = lookup(man_raw, raw_ids, keys)
    keep = (where >= 0) & first_occurrence(raw_ids, keys)
    if not keep.all():
        raw_ids, probs, where, keys = raw_ids[keep], probs[keep], where[keep], keys[keep]
    paths = man_paths.take(pa.array(where.astype(np.int64)))
    locations = None
    if params.views.tiles:
        negative = classes.index(params.ontology.negative_label) \
            if any(s.negative for s in params.ontology.classes.values()) else None
        probs, locs = multiscale(ws, chosen.model_id, params.views, [i.decode() for i in raw_ids], probs,
                                 chosen.predict_proba, negative)
        locations = pa.array(locs, pa.string())
    return raw_ids, probs, keys, paths, locations


def _changes(prev: Previous | None, round_no: int, label: np.ndarray, conf: np.ndarray, is_human: np.ndarray,
             paths: pa.Array, locations: pa.Array | None, probs: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, pa.Array, float | None]:
    """Against the previous table: each row's round, which rows changed, the ids gone, and the
    label churn (None before the first round). A round stores only the rows that changed, so
    an unchanged row must keep the round its label was set in."""
    rounds = np.full(len(label), round_no, np.int32)
    changed, gone = np.ones(len(label), bool), pa.array([], pa.string())
    churn = None
    if prev is not None:
        seen = prev.row >= 0
        if seen.any():
            churn = float(np.count_nonzero(prev.label[seen] != label[seen])) / int(seen.sum())
        # A row keeps the round its label was set in while label, confidence and labeler stay
        # the same; it is stored again only if anything in it changed (its path, or any class's
        # probability), so a round that changes nothing stores nothing, and 1% new images ~1%.
        same_source = np.where(is_human, prev.human, prev.by_labeler & ~prev.human)
        same = seen & (prev.label == label) & (prev.confidence == conf) & same_source
        rounds[same] = prev.round[same]
        changed = ~(same & prev.same_rest(paths, locations, probs))
        gone = prev.gone
    return rounds, changed, gone, churn


def _id_strings(raw_ids: np.ndarray) -> pa.Array:
    """``(N,)`` S64 ids as an Arrow string array, zero-copy (each id is 64 bytes)."""
    n = len(raw_ids)
    offsets = np.arange(0, 64 * (n + 1), 64, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(raw_ids, "S64")))


def resolve(raw_ids: np.ndarray, probs: np.ndarray, classes: list[str], humans: dict[str, str],
            keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: ``(N,)`` label index, confidence and is-human. A human label wins (confidence
    1.0); otherwise the head's most probable label and its probability."""
    n = len(raw_ids)
    label = probs.argmax(1).astype(np.int32) if n else np.zeros(0, np.int32)
    conf = probs.max(1).astype(np.float32) if n else np.zeros(0, np.float32)
    is_human = np.zeros(n, bool)
    if humans and n:
        at = lookup(np.array(list(humans), "S64"), raw_ids, keys)
        is_human = at >= 0
        label_of = np.array([classes.index(lab) for lab in humans.values()], np.int32)
        label[is_human] = label_of[at[is_human]]
        conf[is_human] = 1.0
    return label, conf, is_human


def resolved_table(raw_ids: np.ndarray, paths: pa.Array, label: np.ndarray, conf: np.ndarray, is_human: np.ndarray,
                   classes: list[str], *, source: str, model_id: str, rounds: np.ndarray,
                   locations: pa.Array | None = None, probs: np.ndarray | None = None) -> pa.Table:
    """The resolved table (``RESOLVED_FIELDS`` and ``probs``, the head's ``(L,)`` float32 per
    row); labels and sources dictionary-encoded."""
    n = len(raw_ids)
    probs = np.zeros((n, len(classes)), np.float32) if probs is None else probs
    kind = (~is_human).astype(np.int8)  # 0: human, 1: the model
    return pa.table({
        "image_id": _id_strings(raw_ids),
        "path": paths,
        "label": pa.DictionaryArray.from_arrays(pa.array(label), pa.array(classes, pa.string())),
        "confidence": pa.array(conf),
        "source": pa.DictionaryArray.from_arrays(pa.array(kind), pa.array(["human", source])),
        "model_id": pa.DictionaryArray.from_arrays(pa.array(kind), pa.array(["", model_id])),
        "round": pa.array(np.asarray(rounds, np.int32)),  # the round each row's label was set in
        "location": locations if locations is not None else pa.array(np.full(n, "", object), pa.string()),
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(probs, np.float32).ravel()),
                                                  len(classes)),
    })


@dataclass
class Previous:
    """The last resolved table's rows, aligned to this round's rows (``row`` -1: new image)."""

    row: np.ndarray  # (N,) row in the previous table, -1 where the image is new
    label: np.ndarray  # (N,) label index in this round's ontology (-1: not there, or a removed label)
    confidence: np.ndarray  # (N,) float32
    human: np.ndarray  # (N,) bool: the label was a human's
    by_labeler: np.ndarray  # (N,) bool: the label came from ``labeler_id`` (this round's head)
    round: np.ndarray  # (N,) int32
    gone: pa.Array  # ids in the previous table and not in this round's
    old: pa.Table  # the previous table (path, location, probs), row-aligned by ``row``
    comparable: bool  # same labels and store: the probabilities can be compared

    def same_rest(self, paths: pa.Array, locations: pa.Array | None, probs: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: path, location and every class's probability unchanged."""
        n = len(self.row)
        if not self.comparable or not n:
            return np.zeros(n, bool)
        take = pa.array(np.maximum(self.row, 0))
        same = pc.equal(self.old["path"].take(take), paths).to_numpy(zero_copy_only=False)
        if locations is not None:
            same &= pc.equal(self.old["location"].take(take), locations).to_numpy(zero_copy_only=False)
        old = plain_column(self.old["probs"]).flatten().to_numpy().reshape(-1, probs.shape[1])
        return same & (old[np.maximum(self.row, 0)] == probs).all(1) & (self.row >= 0)


def previous_rows(parts: PartTable, round_no: int, new_raw: np.ndarray, digest: str, classes: list[str],
                  labeler_id: str, store: tuple[str, str]) -> Previous | None:
    """The resolved table as the rounds before ``round_no`` left it, aligned to this round's
    ids (``new_raw``, ``(N,)`` S64 in row order, ``digest`` their fingerprint); None before the first."""
    files = parts.files(before=round_no)
    if not files:
        return None
    meta = parts.metadata(before=round_no)
    comparable = meta.get(CLASSES_KEY.encode()) == json.dumps(classes, ensure_ascii=False).encode() and \
        meta.get(STORE_KEY.encode()) == json.dumps(list(store)).encode()
    n = len(new_raw)
    # The common case: the previous round wrote a whole table (a retrained head changes every
    # row) of exactly these ids in this order: rows align as they are, the ids are not read.
    aligned = len(files) == 1 and files[0][1] and meta.get(FINGERPRINT, b"").decode() == digest
    old = parts.read(columns=resolved_schema(1).names[1:], before=round_no, sort=False, key=False) if aligned \
        else parts.read(before=round_no, sort=False)
    if len(old) == 0:
        return None
    if aligned:
        row, found = np.arange(n), np.ones(n, bool)
    else:
        at = lookup(new_raw, raw_ids_of(plain_column(old["image_id"])), None)  # each old row's row now (-1: gone)
        found = at >= 0
        row = np.full(n, -1, np.int64)
        row[at[found]] = np.flatnonzero(found)
    take = np.maximum(row, 0)
    label = _codes(old["label"], {c: k for k, c in enumerate(classes)})
    human = _codes(old["source"], {"human": 0}) == 0
    by_labeler = _codes(old["model_id"], {labeler_id: 0}) == 0
    return Previous(row, np.where(row >= 0, label[take], -1).astype(np.int32),
                    plain_column(old["confidence"]).to_numpy()[take], human[take], by_labeler[take],
                    plain_column(old["round"]).to_numpy()[take].astype(np.int32),
                    pa.array([], pa.string()) if aligned else plain_column(old["image_id"]).filter(pa.array(~found)),
                    old, comparable)


def _codes(column, known: dict[str, int]) -> np.ndarray:
    """A label column as indices into this round's labels (-1: a label the ontology lost)."""
    column = plain_column(column)
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    if pa.types.is_dictionary(column.type):
        lut = np.array([known.get(c, -1) for c in column.dictionary.to_pylist()] + [-1], np.int32)
        return lut[column.indices.fill_null(len(column.dictionary)).to_numpy()]
    return np.array([known.get(c, -1) for c in column.to_pylist()], np.int32)


def plain_column(column) -> pa.Array:
    """A (possibly chunked) column as one array (dictionary chunks share one dictionary)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
        column = column.unify_dictionaries()
    return column.combine_chunks()


CLASSES_KEY, STORE_KEY = "coldstart.classes", "coldstart.store"  # Parquet schema metadata of each part


def resolved_schema(n_labels: int) -> pa.Schema:
    codes = pa.dictionary(pa.int32(), pa.string())  # few distinct values: read back as codes, not strings
    return pa.schema([("image_id", pa.string()), ("path", pa.string()), ("label", codes),
                      ("confidence", pa.float32()), ("source", codes), ("model_id", codes),
                      ("round", pa.int32()), ("location", pa.string()),
                      ("probs", pa.list_(pa.float32(), n_labels))])


def resolved_parts(ws: Workspace, n_labels: int = 1) -> PartTable:
    """data/labels/resolved/: the resolved table in Parquet parts, keyed by image id (see
    coldstart.tasks.parts): a round stores the rows it changed. ``n_labels`` only shapes an
    empty table's ``probs``."""
    return PartTable(ws.resolved, "image_id", resolved_schema(n_labels))


def read_resolved(ws: Workspace) -> list[dict]:
    """The resolved table as rows (``RESOLVED_FIELDS``), by image id; empty before the first relabel."""
    return resolved_parts(ws).read(columns=RESOLVED_FIELDS[1:]).to_pylist()


def load_probs(ws: Workspace) -> tuple[list[str], np.ndarray, list[str], tuple[str, str]]:
    """(ids, ``(N, L)`` probabilities, label names, (embedding model id, view)): the relabel
    stage's probabilities of every current image, by image id."""
    parts = resolved_parts(ws)
    if not parts.files():
        raise WorkspaceError("no re-labeled images yet: run the relabel stage first (coldstart stage relabel)")
    meta = parts.metadata()
    classes = json.loads(meta[CLASSES_KEY.encode()])
    table = parts.read(columns=["probs"])
    probs = plain_column(table["probs"]).flatten().to_numpy().reshape(-1, len(classes)) if len(table) else \
        np.zeros((0, len(classes)), np.float32)
    return table["image_id"].to_pylist(), probs, classes, tuple(json.loads(meta[STORE_KEY.encode()]))


def multiscale(ws: Workspace, model_id: str, views: ViewsConfig, ids: list[str], global_probs: np.ndarray,
               predict, negative: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Combine global and tile probabilities per class; locate each image's label in a tile.

    Returns ``(N, L)`` scores and, per image, its label's location "x0 y0 x1 y1" (original
    pixels, XYXY) when a tile gave the winning score, "" when the whole image did.
    """
    L = global_probs.shape[1]
    tiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    store = EmbeddingStore(ws.embeddings, model_id, views.key("tiles"))
    wanted = set(ids)
    for chunk_ids, X, boxes in store.iter_boxes():
        probs = predict(X)
        start = 0
        while start < len(chunk_ids):  # an image's tiles are contiguous within a shard
            end = start
            while end < len(chunk_ids) and chunk_ids[end] == chunk_ids[start]:
                end += 1
            if chunk_ids[start] in wanted:
                tiles[chunk_ids[start]] = (probs[start:end], boxes[start:end])
            start = end
    empty = (np.zeros((0, L), np.float32), np.zeros((0, 4), np.int32))
    per_image = [tiles.get(i, empty) for i in ids]
    scores, winner = aggregate_views(global_probs, [p for p, _ in per_image], views.aggregate, views.topk, negative)
    locations = []
    for n, (_, boxes) in enumerate(per_image):
        w = winner[n, scores[n].argmax()]
        locations.append(" ".join(str(int(v)) for v in boxes[w - 1]) if w > 0 else "")
    return scores.astype(np.float32, copy=False), locations
