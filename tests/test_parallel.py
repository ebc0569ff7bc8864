"""Independent work in worker processes gives the numbers of the serial run, bit for bit."""
import dataclasses

import numpy as np
import pytest
import torch

from quee_kit.config import ConfigError, load_config
from quee_kit.parallel import one_thread, resolve_jobs, run_jobs
from quee_kit.options import OptionSpace
from quee_kit.predictors import fit_cross_fitted
from quee_kit.study_run import fit_cross_fitted_jobs


def _square_plus(shared, item):
    return item * item + shared, torch.get_num_threads()


def test_run_jobs_keeps_order_and_runs_on_one_thread():
    serial = run_jobs(_square_plus, range(5), jobs=1, shared=10)
    assert serial == [(i * i + 10, 1) for i in range(5)]
    assert run_jobs(_square_plus, range(5), jobs=2, shared=10) == serial
    threads = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    assert resolve_jobs(3) == 3 and resolve_jobs(0) >= 1
    with pytest.raises(ConfigError, match="jobs"):
        load_config("configs/digits.yaml", ["jobs=-1"])


def assert_same(a, b, where="state"):
    """Equal values, dtypes and shapes, recursively (pickled bytes may differ in memo layout only)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where


def test_parallel_predictor_fits_equal_serial(digits_prep):
    calib = digits_prep.caches["calib"]
    opts = OptionSpace(digits_prep.tree, calib.node_cost)
    base = dataclasses.replace(digits_prep.cfg.predictor, folds=2, epochs=3)
    cfgs = [base, dataclasses.replace(base, kind="mlp"), dataclasses.replace(base, kind="binned")]
    serial = fit_cross_fitted(calib, opts, cfgs, seed=3, progress=False)           # one after another, here
    parallel = fit_cross_fitted_jobs(calib, opts, cfgs, seed=3, progress=False, jobs=2)
    for s, p in zip(serial, parallel):
        assert (s.fold_of == p.fold_of).all()
        for a, b in zip(s.folds + [s.final], p.folds + [p.final]):
            assert_same(a.state(), b.state())   # the same bits, MLP weights included


def test_path_caches_built_side_by_side_equal_serial(tmp_path):
    from quee_kit.prepare import prepare
    caches = {}
    for jobs in (1, 2):
        cfg = load_config("configs/digits.yaml", [f"cache_dir={tmp_path / str(jobs)}", "model.epochs=2",
                                                  f"jobs={jobs}"])
        caches[jobs] = prepare(cfg, progress=False).caches
    for split in ("calib", "test"):
        assert torch.equal(caches[1][split].logits, caches[2][split].logits)


def _total(shared, item):
    return int(shared.sum()) + item


def test_sending_tensors_to_workers_leaves_them_in_place():
    # multiprocessing's pickler would move the tensor to shared memory, leaving `view` dangling
    t = torch.arange(100_000)
    view = t.numpy()
    assert run_jobs(_total, [0, 1], jobs=2, shared=t) == [int(t.sum()), int(t.sum()) + 1]
    assert not t.is_shared()
    assert np.array_equal(view, np.arange(100_000))
