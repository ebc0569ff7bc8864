"""Path tree sizes, the cache against direct forward passes, and stale/corrupt cache detection."""
import warnings

import numpy as np
import pytest
import torch

from quee_kit.paths import PathTree
from quee_kit.prepare import cache_path, exits_table, load_cache
from quee_kit.quant import apply_level, sorted_levels

LEVELS = sorted_levels(["w16a16", "w8a8", "w4a8", "w3a8", "w4a4"])


@pytest.mark.parametrize("family,size", [("monotone", 461), ("free", sum(5 ** t for t in range(1, 7))),
                                         ("uniform", 30)])
def test_tree_sizes(family, size):
    tree = PathTree(LEVELS, 6, family)
    assert len(tree) == size
    assert len(tree.nodes_at(1)) == 5  # the entry level is free in every family


def test_monotone_levels_never_go_up():
    tree = PathTree(LEVELS, 6, "monotone")
    for node in range(len(tree)):
        p = tree.paths[node]
        assert list(p) == sorted(p)
        if tree.parent[node] >= 0:
            assert tree.paths[tree.parent[node]] == p[:-1]


def test_cache_equals_direct_forward(digits_prep):
    prep, cache = digits_prep, digits_prep.caches["test"]
    rng = np.random.default_rng(0)
    x = prep.data.test.x
    for node in rng.choice(len(prep.tree), 12, replace=False):
        path = prep.tree.paths[node]
        levels = [prep.levels[q] for q in path]
        with torch.no_grad():
            h = prep.model.stem(x)
            for t, lv in enumerate(levels):
                h = apply_level(prep.model.blocks[t], lv, prep.cfg.quant.quantize_attention)(h)
            logits = prep.model.heads[len(levels) - 1](h)
        torch.testing.assert_close(cache.logits[node], logits, rtol=1e-4, atol=1e-4)
        assert (cache.pred[node] == logits.argmax(-1)).float().mean() > 0.995
        assert cache.node_cost[node] == pytest.approx(prep.costs.path(levels))


def test_last_depth_logits_equal_the_full_last_block(digits_prep):
    # the cache runs the last block on the CLS token only; its logits must be those of the full block, bit
    # for bit, on the cache's own first chunk (the same batch as the cache's products)
    prep, cache = digits_prep, digits_prep.caches["test"]
    tree, L = prep.tree, prep.tree.L
    x = prep.data.test.x[:prep.cfg.paths.batch_size]
    assert prep.model.heads[L - 1].reads_cls and len(x) >= 17
    with torch.no_grad():
        for node in np.random.default_rng(1).choice(tree.nodes_at(L), 8, replace=False):
            h = prep.model.stem(x)
            for t, q in enumerate(tree.paths[node]):
                h = prep.qblocks[q][t](h)
            assert torch.equal(cache.logits[node, :len(x)], prep.model.heads[L - 1](h))


def test_exits_table(digits_prep):
    df = exits_table(digits_prep)
    ref = df[(df.level == "w16a16") & (df.split == "test")].sort_values("exit")
    assert ref.cost.iloc[-1] == pytest.approx(1.0)
    assert list(ref.cost) == sorted(ref.cost)
    assert set(df.columns) == {"level", "exit", "split", "accuracy", "cost"}
    assert len(df) == 2 * 5 * digits_prep.tree.L


def test_stale_and_corrupt_cache_rebuilt(digits_prep):
    prep = digits_prep
    f = cache_path(prep, "test")[1]   # this prep's own file (other tests store other caches beside it)
    assert f.is_file()
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip a byte in the payload
    f.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cache = load_cache(prep, "test", progress=False)
    assert any("corrupted" in str(x.message) for x in w)
    torch.testing.assert_close(cache.logits, prep.caches["test"].logits)
    # after the rebuild the file loads cleanly again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cache(prep, "test", progress=False)


def test_log_odds_alone_equals_the_full_features(digits_prep):
    # the engine computes only the log-odds for the per-node calibrated predictors: the same bits as the
    # cache's full features, the other columns NaN (a predictor reading a column it does not declare gets NaN,
    # and the engine-vs-cache test in test_policy.py then fails)
    from quee_kit.paths import FEATURE_NAMES, LOG_ODDS, compact_features
    cache, tree = digits_prep.caches["test"], digits_prep.tree
    tied = torch.tensor([[2.0, 2.0, 0.5], [1.0, 1.0, 1.0], [-3.0, 7.0, 7.0]])   # ties at the top
    for logits, depth in [(cache.logits[tree.nodes_at(1)], 1), (cache.logits[tree.nodes_at(4)[:9], :37], 4),
                          (tied, 2)]:
        full = compact_features(logits, None, depth, 0, tree.L, len(tree.levels))
        alone = compact_features(logits, None, depth, 0, tree.L, len(tree.levels), columns=[LOG_ODDS])
        assert torch.equal(alone[..., LOG_ODDS], full[..., LOG_ODDS])
        others = [i for i in range(len(FEATURE_NAMES)) if i != LOG_ODDS]
        assert alone[..., others].isnan().all()
        assert torch.equal(compact_features(logits, None, depth, 0, tree.L, len(tree.levels),
                                            columns=list(range(len(FEATURE_NAMES)))), full)
