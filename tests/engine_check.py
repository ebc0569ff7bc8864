"""One check several tests share: the dynamic engine equals the path-cache simulation."""
import numpy as np
import torch

from quee_kit.engine import DynamicModel
from quee_kit.policy import simulate


def assert_engine_equals_simulation(study, settings, method: str = "quee"):
    """For each (entry level, λ) of ``settings``: the engine run on the test split in batches of mixed sizes
    gives the simulation's exit nodes, the cache's predictions there and the simulation's costs."""
    prep, opts = study.prep, study.opts
    q, fitted = study.methods[method], study.predictors[method]
    x = prep.data.test.x
    for entry, lam in settings:
        sim = simulate(fitted["test"], prep.caches["test"], opts, lam, entry, q.mask, q.call_cost)
        eng = DynamicModel(prep.model, prep.qblocks, prep.costs, fitted["final"], opts, entry, lam, q.mask,
                           q.call_cost)
        res = [eng(x[s:e]) for s, e in [(0, 1), (1, 8), (8, 72), (72, len(x))]]  # batches of mixed sizes
        np.testing.assert_array_equal(np.concatenate([r.node for r in res]), sim.node)
        np.testing.assert_array_equal(torch.cat([r.pred for r in res]).numpy(),
                                      prep.caches["test"].pred.numpy()[sim.node, np.arange(len(x))])
        np.testing.assert_allclose(np.concatenate([r.cost for r in res]), sim.cost, rtol=1e-12)
