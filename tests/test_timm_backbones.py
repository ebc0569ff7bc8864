"""timm ViT/DeiT backbones (issue 11): the adapter against timm itself, MACs against FlopCounterMode,
checkpoints, heads-only training from cached CLS features, and the whole pipeline on every stand-in
format with a tiny timm ViT (pretrained=False, weights from a local checkpoint). Nothing downloads."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from quee_kit.config import ConfigError, load_config
from quee_kit.costs import count_ops
from quee_kit.models import build_model
from quee_kit.quant import QuantLinear, apply_level
from quee_kit.timm_backbones import TimmAttention, import_timm
from standins import write_cifar10, write_cifar100, write_image_folder, write_svhn

TINY = ["model.arch=timm", "model.timm_name=vit_tiny_patch16_224", "model.timm_shape=config", "model.patch=8",
        "model.dim=32", "model.depth=4", "model.heads=2", "model.mlp_ratio=2"]


def _tiny_timm(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return import_timm().create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                      embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, num_classes=num_classes).eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A local checkpoint of the tiny timm ViT (random weights, as a user's fine-tuned file would be)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_vit.pth"
    vit = _tiny_timm()
    torch.save(vit.state_dict(), path)
    return path, vit


def _shipped_timm_names():
    names = set()
    for f in sorted(Path("configs").glob("*.yaml")):
        cfg = load_config(None, {k: v for k, v in __import__("yaml").safe_load(f.read_text()).items()
                                 if k == "model"})
        if cfg.model.arch == "timm" and cfg.model.timm_shape == "pretrained":
            names.add(cfg.model.timm_name)
    return sorted(names)


def test_adapter_equals_timm_and_checkpoint_loads(tiny_ckpt, tmp_path):
    path, vit = tiny_ckpt
    model = build_model(load_config(None, TINY + [f"model.checkpoint={path}"]).model, (3, 32, 32), 10).eval()
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x)[-1], vit((x - mean) / std), atol=1e-5)  # last exit = timm's own output
        # 16x16 inputs are resized to the backbone's input size by the stem, with its interpolation
        small = torch.rand(2, 3, 16, 16)
        big = F.interpolate(small, size=(32, 32), mode="bicubic", align_corners=False)
        assert torch.allclose(model(small)[-1], vit((big - mean) / std), atol=1e-5)
    assert all(isinstance(b.attn, TimmAttention) for b in model.blocks)
    # the checkpoint's own 10-class head is the last exit, kept frozen; the other exits are new and trainable
    assert not any(p.requires_grad for p in model.heads[-1].parameters())
    assert all(p.requires_grad for h in model.heads[:-1] for p in h.parameters())
    # safetensors files load the same weights
    from safetensors.torch import save_file
    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(st))
    again = build_model(load_config(None, TINY + [f"model.checkpoint={st}"]).model, (3, 32, 32), 10).eval()
    with torch.no_grad():
        assert torch.equal(again(x)[-1], model(x)[-1])


def test_checkpoint_of_another_architecture_is_one_clear_error(tiny_ckpt):
    path, _ = tiny_ckpt
    cfg = load_config(None, TINY + ["model.dim=64", f"model.checkpoint={path}"]).model
    with pytest.raises(ConfigError) as e:
        build_model(cfg, (3, 32, 32), 10)
    msg = str(e.value)
    assert msg.startswith(f"config: model.checkpoint: {path} does not fit timm model 'vit_tiny_patch16_224'")
    assert "of another shape (e.g. cls_token (1, 1, 32) vs (1, 1, 64))" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="model.checkpoint must be null or an existing"):
        load_config(None, TINY + ["model.checkpoint=/nonexistent/w.pth"])


@pytest.mark.parametrize("name", _shipped_timm_names())
def test_block_macs_match_flop_counter(name):
    """Every timm model a shipped config names: one block (same as all of them) counted both ways."""
    vit = import_timm().create_model(name.split(".")[0], pretrained=False, depth=1).eval()
    block = vit.blocks[0]
    block.attn = TimmAttention(block.attn)
    h = torch.zeros(1, vit.patch_embed.num_patches + 1, vit.embed_dim)
    with torch.no_grad():
        ops, _ = count_ops(block, h)
        with FlopCounterMode(display=False) as fc:
            block(h)
    assert ops.macs == fc.get_total_flops() // 2 > 0
    q = apply_level(block, "w4a4")
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 4 and q.attn.matmul_quant is not None


def test_reference_level_is_the_float_block_and_low_bits_change_it(tiny_ckpt):
    _, vit = tiny_ckpt
    model = build_model(load_config(None, TINY).model, (3, 32, 32), 10).eval()
    h = model.stem(torch.rand(3, 3, 32, 32))
    with torch.no_grad():
        ref = model.blocks[0](h)
        assert torch.equal(apply_level(model.blocks[0], "w16a16")(h), ref)
        low = apply_level(model.blocks[0], "w4a4")(h)
    assert 0 < (low - ref).abs().max() < ref.abs().max()


def test_heads_only_trains_heads_from_one_backbone_pass(tiny_ckpt):
    from quee_kit.data import Split
    from quee_kit.train import exit_accuracies, train_early_exit
    path, _ = tiny_ckpt
    cfg = load_config(None, TINY + [f"model.checkpoint={path}", "model.train=heads", "model.epochs=30",
                                    "model.batch_size=32", "model.lr=0.01"]).model
    model = build_model(cfg, (3, 32, 32), 10)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (96,), generator=g)
    x = (torch.rand(96, 3, 32, 32, generator=g) * 0.5 + y.view(-1, 1, 1, 1) / 20.0).clamp(0, 1)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("heads.0")
              and not k.startswith("heads.1") and not k.startswith("heads.2")}
    calls = []
    model.stem.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    before = exit_accuracies(model, Split(x, y))
    stats = train_early_exit(model, Split(x, y), cfg, heads_only=True, progress=False)
    assert sum(calls) == 96 + 96  # one backbone pass over train for the features (+ the accuracy pass before)
    after = exit_accuracies(model, Split(x, y))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())  # backbone + own head unchanged
    assert all(a > b + 0.2 for a, b in zip(after[:3], before[:3]))  # the new exits learned the brightness cue
    assert after[3] == before[3] and stats["feature_samples_per_s"] > 0 and stats["head_seconds"] > 0


STANDINS = {
    "cifar10": (lambda r: write_cifar10(r, per_batch=24, n_test=30), [90, 30, 30], 10),
    "cifar100": (lambda r: write_cifar100(r, n_train=120, n_test=30), [90, 30, 30], 100),
    "svhn": (lambda r: write_svhn(r, n_train=120, n_test=30), [90, 30, 30], 10),
    "imagenet": (lambda r: write_image_folder(r, classes=4, per_class=(30, 8)), [90, 30, 32], 4),
}


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_pipeline_end_to_end_on_standin(name, tiny_ckpt, tmp_path):
    """data (stand-in) -> frozen timm backbone from a local checkpoint -> heads from cached features ->
    path cache -> predictors -> curves, through `quee-kit run`."""
    from quee_kit.cli import main
    write, sizes, classes = STANDINS[name]
    write(tmp_path / "data")
    ckpt, vit = tiny_ckpt
    # cifar100 and imagenet (4 classes): the checkpoint's 10-class head does not fit, so the last exit is
    # re-initialized and trained with the others; cifar10 and svhn keep it frozen.
    sets = TINY + [f"data.name={name}", f"data.root={tmp_path / 'data'}", "data.verify=false", f"data.sizes={sizes}",
                   "data.image_size=32", "data.workers=0", f"model.checkpoint={ckpt}", "model.train=heads",
                   "model.epochs=5", "model.batch_size=32", f"cache_dir={tmp_path / 'cache'}",
                   "quant.levels=[w16a16,w8a8,w4a4]", "predictor.folds=2", "predictor.epochs=3", "predictor.K=4",
                   "eval.budgets=[0.2,0.5]", "eval.auc_range=[0.1,1.0]", "eval.lambda_grid=10", "eval.bootstrap=100"]
    args = ["run", "--config", "configs/digits.yaml", "--quiet", "--out", str(tmp_path / "out")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["split_sizes"] == dict(zip(["train", "calib", "test"], sizes))
    assert summary["tree_nodes"] == 3 + 6 + 10 + 15  # monotone, 3 levels x 4 blocks
    assert {"quee", "best-single", "oracle", "static-quant"} <= set(curves.method)
    # the oracle bounds every method's test accuracy; static full depth at the reference costs exactly 1
    test = curves[curves.split == "test"]
    assert test[test.method == "oracle"].accuracy.max() >= test[test.method != "oracle"].accuracy.max()
    ref = test[(test.method == "static-quant")].sort_values("cost").iloc[-1]
    assert ref.cost == pytest.approx(1.0)
    # the cached reference path is the adapter's own last exit on the test split (same weights, same inputs)
    from quee_kit.prepare import load_data, prepare
    cfg = load_config("configs/digits.yaml", sets)
    prep = prepare(cfg, progress=False)
    node = prep.caches["test"].node((0, 0, 0, 0))
    with torch.no_grad():
        x = prep.data.test.x[torch.arange(len(prep.data.test))]
        assert torch.allclose(prep.caches["test"].logits[node], prep.model(x)[-1], atol=1e-5)
    assert len(load_data(cfg.data, cfg.model).test) == sizes[2]


def test_bf16_reference_runs_in_bf16_and_returns_float32():
    from quee_kit.quant import CastBlock
    model = build_model(load_config(None, TINY + ["quant.ref_dtype=bfloat16"]).model, (3, 32, 32), 10).eval()
    with torch.no_grad():
        h = model.stem(torch.rand(4, 3, 32, 32))
        ref, low = model.blocks[0](h), CastBlock(model.blocks[0], torch.bfloat16)(h)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)  # it really ran in bf16
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()           # ... within bf16's ~3 significant digits
    with pytest.raises(ConfigError, match="quant.ref_dtype must be 'float32' or 'bfloat16'"):
        load_config(None, ["quant.ref_dtype=float16"])


def test_unknown_model_and_unreachable_weights_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"^config: model.timm_name: unknown timm model 'vit_nope'"):
        build_model(load_config(None, ["model.arch=timm", "model.timm_name=vit_nope"]).model, (3, 32, 32), 10)
    timm = import_timm()

    def offline(*a, **k):  # what the hub raises without network or cache (an OSError subclass)
        raise OSError("We have no connection or you passed local_files_only")
    monkeypatch.setattr(timm, "create_model", offline)
    cfg = load_config(None, ["model.arch=timm", "model.timm_name=deit_tiny_patch16_224", "model.pretrained=true"])
    with pytest.raises(ConfigError) as e:
        build_model(cfg.model, (3, 32, 32), 10)
    assert str(e.value).startswith("config: model.pretrained: cannot get the weights of 'deit_tiny_patch16_224'")
    assert "model.checkpoint: PATH" in str(e.value) and "\n" not in str(e.value)
