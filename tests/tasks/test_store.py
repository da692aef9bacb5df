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


def test_atomic_writes_get_the_umask_s_permissions_not_0600(tmp_path):
    import os
    import stat

    from coldstart.tasks.workspace import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "review.csv", "image,label\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "review.csv").stat().st_mode) == 0o644
