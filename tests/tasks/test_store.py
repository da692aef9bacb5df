import os
import subprocess
import sys
import textwrap

import numpy as np

from coldstart.tasks.store import EmbeddingStore


def test_append_and_load_in_any_order(tmp_path):
    s = EmbeddingStore(tmp_path, "ViT-B-32@laion2b_s34b_b79k")
    a, b = np.eye(3, 4, dtype=np.float32), np.ones((2, 4), np.float32)
    s.append(["a" * 64, "b" * 64, "c" * 64], a)
    s.append(["d" * 64, "e" * 64], b)
    assert s.ids() == {x * 64 for x in "abcde"}
    ids, X = s.load(["e" * 64, "a" * 64])
    np.testing.assert_array_equal(X, np.stack([b[1], a[0]]))
    assert EmbeddingStore(tmp_path, "other-model").ids() == set()


def test_process_killed_mid_append_leaves_store_readable(tmp_path):
    s = EmbeddingStore(tmp_path, "m")
    s.append(["a" * 64], np.ones((1, 4), np.float32))
    # A child writes the vectors file of a second shard and is killed before its ids file.
    code = textwrap.dedent(f"""
        import os, numpy as np, io
        from coldstart.tasks.workspace import atomic_write_bytes
        from coldstart.tasks.store import EmbeddingStore
        s = EmbeddingStore({str(tmp_path)!r}, "m")
        buf = io.BytesIO(); np.save(buf, np.zeros((1, 4), np.float32))
        atomic_write_bytes(s.dir / "000001.vec.npy", buf.getvalue())
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == -9
    assert s.ids() == {"a" * 64}
    s.append(["b" * 64], np.full((1, 4), 2, np.float32))  # overwrites the orphan
    ids, X = s.load()
    assert ids == ["a" * 64, "b" * 64] and X[1, 0] == 2


def test_streamed_relabel_equals_in_memory(tmp_path):
    from coldstart.bench.relabel import stream_relabel
    from coldstart.models.zeroshot import ZeroShotHead

    rng = np.random.default_rng(0)
    s = EmbeddingStore(tmp_path, "m")
    X = rng.normal(size=(1000, 16)).astype(np.float32)
    for start in range(0, 1000, 300):  # uneven shards
        s.append([f"{k:064x}" for k in range(start, min(start + 300, 1000))], X[start : start + 300])
    w = rng.normal(size=(4, 16)).astype(np.float32)
    head = ZeroShotHead(w / np.linalg.norm(w, axis=1, keepdims=True), np.array([0, 1, 2, 2]), 3, 30.0)
    ids, labels, conf = stream_relabel(s, head.predict_proba)
    full = head.predict_proba(X)
    assert ids == [f"{k:064x}" for k in range(1000)] and len(s) == 1000
    np.testing.assert_array_equal(labels, full.argmax(1))
    np.testing.assert_allclose(conf, full.max(1), rtol=1e-6)


def test_bench_relabel_reports_its_figures(tmp_path):
    from coldstart.bench.relabel import bench_relabel

    figures = bench_relabel(n=20_000, dim=64, n_classes=5, shard_rows=4096)
    assert figures["n"] == 20_000 and figures["relabel_1m_s"] > 0 and 0 < figures["peak_rss_mb"] < 1536
