"""neighbours.py: exact search equals brute force; faiss search reaches recall@10 >= 0.95; self excluded."""

import numpy as np
import pytest

from cleannet_tf.features import neighbours


def clustered(n: int, d: int, *, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """(n, d) float32: clusters of spread 0.5 around N(0, 1) centres, on a random 16-dim subspace plus noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, d)).astype(np.float32)
    centres = rng.standard_normal((clusters, 16)).astype(np.float32)
    z = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, 16)).astype(np.float32)
    return z @ basis + 0.1 * rng.standard_normal((n, d)).astype(np.float32)


def brute_force(x: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_exact_equals_brute_force(exclude_self):
    x = clustered(300, 12, seed=1) * np.random.default_rng(5).uniform(0.1, 10, (300, 1))  # any row norm
    want_i, want_s = brute_force(x, 7, exclude_self)
    got_i, got_s = neighbours.nearest_neighbours(x, 7, exclude_self=exclude_self, method="exact", block_rows=37)
    assert got_i.shape == (300, 7) and got_i.dtype == np.int64 and got_s.dtype == np.float32
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert (np.diff(got_s, axis=1) <= 0).all()
    assert (got_i == np.arange(300)[:, None]).any(axis=1).all() != exclude_self  # self is nearest unless excluded


def test_exact_in_chunks_of_base_rows_equals_one_chunk(monkeypatch):
    x = clustered(500, 8, seed=2)
    whole = neighbours.nearest_neighbours(x, 5, method="exact")
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 4 * 8 * 64)  # 64-row base chunks, 64-row query blocks
    chunked = neighbours.nearest_neighbours(x, 5, method="exact")
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], atol=1e-6)


def test_exclude_self_with_duplicates_keeps_the_other_copy():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]], np.float32)
    for method in ("exact", "faiss"):
        indices, sims = neighbours.nearest_neighbours(x, 1, method=method, index="ivf", nlist=1, reduce_dim=0)
        np.testing.assert_array_equal(indices[:, 0], [1, 0, 3, 2])
        np.testing.assert_allclose(sims[:2, 0], [1.0, 1.0], atol=1e-6)


def test_faiss_recall_against_exact_and_deterministic():
    x = clustered(20000, 64, clusters=200, seed=3)
    indices, sims = neighbours.nearest_neighbours(x, 10, method="faiss", index="ivf", reduce_dim=32, seed=0)
    assert indices.shape == (20000, 10)
    assert not (indices == np.arange(20000)[:, None]).any()
    assert (np.diff(sims, axis=1) <= 0).all()
    recall = neighbours.recall_at_k(x, indices, sample=500)
    assert recall >= 0.95, recall
    # The similarities returned are the exact cosines of the returned rows.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(sims[:50], np.einsum("nd,nkd->nk", unit[:50], unit[indices[:50]]), atol=1e-5)
    again, _ = neighbours.nearest_neighbours(x, 10, method="faiss", index="ivf", reduce_dim=32, seed=0)
    np.testing.assert_array_equal(again, indices)
    # A poor index (one list probed of many, few candidates) is caught by recall_at_k: the check can fail.
    poor, _ = neighbours.nearest_neighbours(x, 10, method="faiss", index="ivf", reduce_dim=2, nlist=400, nprobe=1,
                                            candidates=10)
    assert neighbours.recall_at_k(x, poor, sample=500) < 0.9


def test_auto_switches_at_the_threshold_and_bad_input_errors():
    x = clustered(400, 16, seed=4)
    exact = neighbours.nearest_neighbours(x, 5, method="exact")
    np.testing.assert_array_equal(neighbours.nearest_neighbours(x, 5)[0], exact[0])  # below: exact
    approx = neighbours.nearest_neighbours(x, 5, exact_max_rows=100, index="ivf", nlist=4, nprobe=4, reduce_dim=0)
    np.testing.assert_array_equal(approx[0], exact[0])  # above: faiss, here probing every list
    with pytest.raises(ValueError, match="k must be in"):
        neighbours.nearest_neighbours(x, 400)
    with pytest.raises(ValueError, match="method must be"):
        neighbours.nearest_neighbours(x, 5, method="scann")
    with pytest.raises(ValueError, match="2-D"):
        neighbours.nearest_neighbours(x[0], 5)


def test_without_faiss_auto_falls_back_to_exact_and_faiss_says_how_to_install(monkeypatch):
    x = clustered(300, 8, seed=6)
    exact = neighbours.nearest_neighbours(x, 4, method="exact")
    monkeypatch.setattr(neighbours, "faiss_available", lambda: False)
    np.testing.assert_array_equal(neighbours.nearest_neighbours(x, 4, exact_max_rows=100)[0], exact[0])
    with pytest.raises(ImportError, match=r"cleannet_tf\[scale\]"):
        neighbours.nearest_neighbours(x, 4, method="faiss")


def test_approximate_index_searches_any_query_rows_like_the_whole_search():
    x = clustered(3000, 32, seed=7)
    index = neighbours.ApproximateIndex(x, reduce_dim=16, seed=0)
    whole = index.search(5)
    rows = np.array([2999, 0, 17, 17])
    part = index.search(5, queries=rows)
    np.testing.assert_array_equal(part[0], whole[0][rows])
    np.testing.assert_allclose(part[1], whole[1][rows])
    np.testing.assert_array_equal(neighbours.nearest_neighbours(x, 5, method="faiss", reduce_dim=16)[0], whole[0])


def test_hnsw_index_recall_against_exact_and_a_poor_graph_is_caught():
    x = clustered(8000, 64, clusters=100, seed=8)
    indices, sims = neighbours.nearest_neighbours(x, 10, method="faiss", index="hnsw", reduce_dim=32, ef_search=64)
    assert indices.shape == (8000, 10) and not (indices == np.arange(8000)[:, None]).any()
    assert (np.diff(sims, axis=1) <= 0).all()
    assert neighbours.recall_at_k(x, indices, sample=500) >= 0.95
    again, _ = neighbours.nearest_neighbours(x, 10, method="faiss", index="hnsw", reduce_dim=32, ef_search=64)
    np.testing.assert_array_equal(again, indices)  # the graph is built on one thread: deterministic
    # A graph of 2 links per row searched with 10 candidates, in 2 projected dims, misses most neighbours.
    poor, _ = neighbours.nearest_neighbours(x, 10, method="faiss", index="hnsw", reduce_dim=2, hnsw_m=2,
                                            ef_search=10, candidates=10, target_recall=0)
    assert neighbours.recall_at_k(x, poor, sample=500) < 0.9
    with pytest.raises(ValueError, match="index must be"):
        neighbours.nearest_neighbours(x, 5, method="faiss", index="lsh")


def test_search_effort_is_raised_until_recall_meets_the_target_and_a_shortfall_is_logged(caplog):
    x = clustered(8000, 64, clusters=100, seed=8)
    graph = neighbours.ApproximateIndex(x, index="hnsw", reduce_dim=32, hnsw_m=2, ef_search=10)
    poor = neighbours.recall_at_k(x, graph.search(10, candidates=10)[0], sample=500)
    assert poor < 0.7
    assert graph.tune(10, target_recall=0.9, candidates=10) >= 0.9 and graph.effort > 10
    # Tuned on 200 rows, it holds on others.
    assert neighbours.recall_at_k(x, graph.search(10, candidates=10)[0], sample=500, seed=5) >= 0.9
    lists = neighbours.ApproximateIndex(x, index="ivf", reduce_dim=32, nprobe=1)
    assert neighbours.recall_at_k(x, lists.search(10)[0], sample=500) < 0.9
    assert lists.tune(10) >= neighbours.TARGET_RECALL and lists.effort > 1
    # nearest_neighbours tunes by default; target_recall=0 keeps the effort given.
    tuned, _ = neighbours.nearest_neighbours(x, 10, method="faiss", reduce_dim=32, hnsw_m=4, ef_search=4)
    untuned, _ = neighbours.nearest_neighbours(x, 10, method="faiss", reduce_dim=32, hnsw_m=4, ef_search=4,
                                               candidates=10, target_recall=0)
    assert neighbours.recall_at_k(x, tuned, sample=500, seed=5) >= 0.95
    assert neighbours.recall_at_k(x, untuned, sample=500, seed=5) < 0.95
    # Two projected dims cannot reach the target at any effort: the most tried is kept, with a warning.
    flat = neighbours.ApproximateIndex(x, index="hnsw", reduce_dim=2, hnsw_m=2, ef_search=512)
    with caplog.at_level("WARNING"):
        assert flat.tune(10, target_recall=0.99, candidates=10) < 0.99
    assert flat.effort == neighbours.MAX_EF_SEARCH
    assert "below the target 0.99" in caplog.text
