"""quee-probe on configs/conditions.yaml (docs/conditions.md, "A paid probe"), after
``quee-kit run --config configs/conditions.yaml --seeds SEEDS --set cache_dir=CACHE
--set eval.variants='["quee","quee-exit-only","quee-probe"]' --out OUT``:

    python benchmarks/probe_conditions.py SEEDS CACHE OUT

prints (1) calib gains of the budget rule's choices (the selection evidence), (2) the ``budgets.csv`` rows of
the QuEE variants (test, seeds pooled), (3) the stratified hurt AUROC per decision depth of ``quee``'s and
``quee-probe``'s predictors (``room_table``; ``room.csv`` holds ``quee``'s only), and (4) a bound, not a
method: the probe predictor's estimates with the probe given for free (no probe cost, plain accounting).
"""
import sys

import pandas as pd

from quee_kit.conditions import calib_gain, room_table
from quee_kit.dial_sweep import setting_studies
from quee_kit.policy import QueePolicy, lambda_grid
from quee_kit.study import method_points, select_points

seeds, cache, out = [int(s) for s in sys.argv[1].split(",")], sys.argv[2], sys.argv[3]
V = ["quee", "quee-exit-only", "quee-probe"]
cfg, studies = setting_studies("configs/conditions.yaml", seeds, [f"cache_dir={cache}"], variants=V)
B = cfg.eval.budgets
cg = pd.concat([calib_gain(s, m, B, other=o).assign(other=o) for s in studies
                for m, o in [("quee-probe", "best-static"), ("quee-probe", "quee"), ("quee", "best-static")]])
print("calib gain (points, mean over seeds)")
print(cg.groupby(["method", "other", "budget"])["calib_gain"].agg(["mean", list]).unstack("budget")["mean"].round(2).to_string())
cg.to_csv(f"{out}/calib_gain.csv", index=False)
bt = pd.read_csv(f"{out}/budgets.csv")
cols = ["method", "budget", "split", "accuracy", "cost", "diff_vs_best_static", "diff_lo_static", "diff_hi_static", "diff_t_lo_static",
        "diff_t_hi_static", "verdict_static", "precision_diversity"]
allrows = bt[(bt.seed.astype(str) == "all") & bt.method.isin(V)]
print(allrows[[c for c in cols if c in bt]].round(3).to_string(index=False))
rows = []
for v in ("quee", "quee-probe"):
    r = room_table(studies, variant=v)
    r = r[r.exit < r.exit.max()]
    g = r.groupby(["split", "scope", "exit"])["decision_hurt_auroc"].mean().unstack("exit").round(3)
    g.insert(0, "variant", v)
    rows.append(g)
ha = pd.concat(rows).reset_index()
ha = ha[ha.scope.isin(["tree", "visited@0.03", "visited@0.04", "visited@0.05", "visited@0.06"])]
print("hurt AUROC per decision depth (seed mean)")
print(ha.sort_values(["split", "scope", "variant"]).to_string(index=False))
ha.to_csv(f"{out}/hurt_auroc_probe.csv", index=False)

print('free-probe bound')
rows = []
for s in studies:
    p = s.predictors["quee-probe"]
    free = QueePolicy("probe-free", p, s.prep.caches, s.opts, lambda_grid(cfg.eval.lambda_grid), "all",
                      call_cost=p["call_cost"])
    pts = {"probe-free": method_points(free), **{m: s.points[m] for m in ("quee", "quee-probe", "best-static")}}
    for m, df in pts.items():
        idx, _ = select_points(df, B)
        for b, i in zip(B, idx):
            rows.append({"seed": s.cfg.seed, "method": m, "budget": b, "acc_calib": df["acc_calib"].iloc[i],
                         "acc_test": df["acc_test"].iloc[i], "cost_test": df["cost_test"].iloc[i]})
t = pd.DataFrame(rows).set_index(["seed", "budget", "method"]).unstack("method")
for split in ("calib", "test"):
    a = t[f"acc_{split}"]
    d = pd.DataFrame({f"{m} - best-static": 100 * (a[m] - a["best-static"]) for m in ("probe-free", "quee-probe", "quee")})
    d["probe-free - quee"] = 100 * (a["probe-free"] - a["quee"])
    print(split, "(points, mean over seeds)")
    print(d.groupby("budget").mean().round(2).T.to_string())
