"""The path cache sharded across torchrun ranks (2 CPU processes on gloo, loopback only): shard
arithmetic, the generic sharded build, and the CLI end to end, including a rank dying mid-build and
the rerun computing only the shards it lost. The merged cache must equal a one-process build tensor
by tensor, and exits.csv / budgets.csv byte for byte."""
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from quee_kit import distributed
from quee_kit.artifacts import load_artifact, tensor_digest
from quee_kit.cli import main

ROOT = Path(__file__).resolve().parent.parent
# 359 calib and 359 test digits in shards of 64 samples: 6 shards per split, ranks 0 and 1 get 3 each
SETS = ["model.epochs=15", "paths.batch_size=64"]
RUN_SETS = ["predictor.folds=2", "predictor.epochs=5", "eval.lambda_grid=20", "eval.bootstrap=100",
            "eval.budgets=[0.04,0.08,0.2]", "eval.auc_range=[0.04,0.3]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(cmd: str, cache: Path, out: Path, extra=()) -> list[str]:
    a = [cmd, "--config", "configs/digits.yaml", "--quiet", "--out", str(out)]
    for s in [f"cache_dir={cache}", *SETS, *extra]:
        a += ["--set", s]
    return a


def _torchrun(args: list[str], nproc: int = 2, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "quee_kit", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _artifact(path: Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<I", raw[8:12])
    return load_artifact(path, json.loads(raw[12:12 + n])["key"])


def _one(folder: Path, pattern: str) -> Path:
    files = sorted(folder.glob(pattern))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("n,size,world", [(359, 64, 2), (359, 64, 5), (100, 7, 3), (5, 10, 4), (0, 3, 2)])
def test_shards_are_contiguous_balanced_and_independent_of_world(n, size, world):
    ranges = distributed.shard_ranges(n, size)
    assert [a for a, _ in ranges] == list(range(0, n, size))  # fixed by (n, size) alone, so resumable
    assert all(b - a == size for a, b in ranges[:-1]) and (not ranges or 0 < ranges[-1][1] - ranges[-1][0] <= size)
    per_rank = [distributed.rank_shards(len(ranges), r, world) for r in range(world)]
    assert [i for r in per_rank for i in r] == list(range(len(ranges)))  # each shard once, rank order
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def test_backend_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.backend_for("cuda") == "nccl" and distributed.backend_for("cuda:1") == "nccl"
    assert distributed.backend_for("cpu") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend_for("cuda") == "gloo"


def _toy_rank(r: int, world: int, port: int, folder: str) -> None:
    """One rank of the generic sharded build: squares of 0..22 in shards of 5 items."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(r))
    folder = Path(folder)
    with distributed.process_group("cpu") as active:
        assert active and distributed.world_size() == world
        # rank 0 runs the body first: when rank 1 enters, rank 0's file is already there
        with distributed.main_first():
            (folder / f"first-{r}").write_text(str(sorted(p.name for p in folder.glob("first-*"))))
        mine = []

        def compute(a, b):
            mine.append((a, b))
            return torch.arange(a, b) ** 2

        def merge(shards, info):
            return {"x": torch.cat([p for _, _, p in shards]), "info": info}

        got = distributed.load_or_build_sharded(folder / "toy.pt", "toy-key", 23, 5, compute, merge, progress=False)
        (folder / f"rank-{r}.json").write_text(json.dumps({"mine": mine, "got": None if got is None else {
            "x": got["x"].tolist(), "computed": got["info"]["computed"], "reused": got["info"]["reused"]}}))


def test_generic_sharded_build_on_two_gloo_ranks(tmp_path):
    mp.spawn(_toy_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["mine"] == [[0, 5], [5, 10]] and r1["mine"] == [[10, 15], [15, 20], [20, 23]]
    assert r1["got"] is None and r0["got"]["x"] == [i * i for i in range(23)]
    assert r0["got"]["computed"] == [0, 1, 2, 3, 4] and r0["got"]["reused"] == []
    assert (tmp_path / "first-0").read_text() == "[]" and (tmp_path / "first-1").read_text() == "['first-0']"
    assert (tmp_path / "toy.pt").is_file() and not (tmp_path / "toy.pt.shards").exists()


def test_without_a_process_group_the_helper_is_load_or_build(tmp_path):
    assert not distributed.is_active()
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return torch.arange(a, b) ** 2

    def merge(shards, info):
        return torch.cat([p for _, _, p in shards])

    for _ in range(2):  # the second call loads the saved artifact and computes nothing
        x = distributed.load_or_build_sharded(tmp_path / "toy.pt", "k", 23, 5, compute, merge, progress=False)
        assert torch.equal(x, torch.arange(23) ** 2)
    assert calls == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert not (tmp_path / "toy.pt.shards").exists()  # one process writes no shard files


def test_one_rank_group_reuses_valid_shards_and_rebuilds_a_damaged_one(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        calls = []

        def compute(a, b):
            calls.append((a, b))
            return torch.arange(a, b) ** 2

        def merge(shards, info):
            return {"x": torch.cat([p for _, _, p in shards]), "computed": info["computed"], "reused": info["reused"]}

        folder = tmp_path / "toy.pt.shards"
        # shards 0 and 1 left by an earlier run: 0 intact, 1 with a flipped byte; 2..4 missing
        from quee_kit.artifacts import save_artifact
        for a, b in [(0, 5), (5, 10)]:
            save_artifact(folder / f"{a:010d}-{b:010d}.pt", distributed.shard_key("k", a, b), torch.arange(a, b) ** 2)
        raw = bytearray((folder / "0000000005-0000000010.pt").read_bytes())
        raw[-3] ^= 0xFF
        (folder / "0000000005-0000000010.pt").write_bytes(bytes(raw))
        with pytest.warns(UserWarning, match="shard 1.*corrupted"):
            got = distributed.load_or_build_sharded(tmp_path / "toy.pt", "k", 23, 5, compute, merge, progress=False)
        assert torch.equal(got["x"], torch.arange(23) ** 2)
        assert got["reused"] == [0] and got["computed"] == [1, 2, 3, 4]
        assert calls == [(5, 10), (10, 15), (15, 20), (20, 23)]
        assert not folder.exists()
    finally:
        dist.destroy_process_group()
    assert not distributed.is_active()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: `quee-kit cache` in this process, no process group."""
    tmp = tmp_path_factory.mktemp("one")
    assert main(_args("cache", tmp / "cache", tmp / "out")) == 0
    return tmp


def test_torchrun_cache_resumes_after_a_rank_dies_and_equals_one_process(one_process, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    # run 1: rank 1 dies right after writing its first shard (calib samples 192..256)
    r = _torchrun(_args("cache", cache, out), env_extra={distributed.EXIT_HOOK_ENV: "1:1"})
    assert r.returncode != 0, r.stdout + r.stderr
    shard_dir = _one(cache, "cache-calib-*.pt.shards")
    left = {p.name for p in shard_dir.glob("*.pt")}
    assert "0000000192-0000000256.pt" in left and not left & {"0000000256-0000000320.pt", "0000000320-0000000359.pt"}
    assert not list(cache.glob("cache-*.pt")) and not (out / "exits.csv").exists()  # nothing merged
    names = [f"{a:010d}-{b:010d}.pt" for a, b in distributed.shard_ranges(359, 64)]
    survivors = [i for i, name in enumerate(names) if name in left]

    # run 2: the same command finishes, reusing exactly the shards that survived
    r = _torchrun(_args("cache", cache, out))
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads((out / "cache_stats.json").read_text())["splits"]
    assert stats["calib"]["reused"] == survivors and stats["calib"]["world_size"] == 2
    assert stats["calib"]["computed"] == sorted(set(range(6)) - set(survivors))
    assert stats["test"]["computed"] == list(range(6)) and stats["test"]["reused"] == []
    assert not list(cache.glob("*.shards"))  # shards removed once merged

    # the merged caches are the files one process writes: same names, same tensors, bit for bit
    ref = one_process / "cache"
    for split in ("calib", "test"):
        a = _artifact(_one(ref, f"cache-{split}-*.pt"))
        b = _artifact(cache / _one(ref, f"cache-{split}-*.pt").name)
        assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["y"], b["y"])
        assert np.array_equal(a["node_cost"], b["node_cost"]) and np.array_equal(a["static_cost"], b["static_cost"])
    ma, mb = _artifact(_one(ref, "model-*.pt")), _artifact(_one(cache, "model-*.pt"))
    assert tensor_digest(ma["state_dict"]) == tensor_digest(mb["state_dict"])
    assert (one_process / "out" / "exits.csv").read_bytes() == (out / "exits.csv").read_bytes()


def test_torchrun_run_gives_the_one_process_budgets(one_process, tmp_path):
    # `quee-kit run` under torchrun: its cache stage sharded on a fresh cache dir, the rest on rank 0
    r = _torchrun(_args("run", tmp_path / "cache", tmp_path / "out", RUN_SETS) + ["--seeds", "0"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert main(_args("run", one_process / "cache", one_process / "run", RUN_SETS) + ["--seeds", "0"]) == 0
    a, b = pd.read_csv(one_process / "run" / "budgets.csv"), pd.read_csv(tmp_path / "out" / "budgets.csv")
    pd.testing.assert_frame_equal(a, b)
