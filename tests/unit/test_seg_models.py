"""Segmentation networks: shapes, clear size errors, offline smp factory, and config composition."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from calib_seg.models.smp_factory import available_architectures, build_smp
from calib_seg.models.unet import AttentionGate, AttentionResUNet, AttentionUNet, UNet
from helpers.paths import REPO

CONF = REPO / "conf"
NATIVE = [UNet, AttentionUNet, AttentionResUNet]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("cls", NATIVE)
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_native_models_output_one_logit_channel_with_input_height_and_width(cls, norm):
    model = cls(in_channels=1, base_filters=4, depth=4, norm=norm, dropout=0.1)
    x = torch.rand(2, 1, 64, 96)
    assert model(x).shape == (2, 1, 64, 96)


@pytest.mark.parametrize("cls", NATIVE)
@pytest.mark.parametrize("depth,size", [(1, (6, 10)), (3, (40, 24))])
def test_native_models_accept_any_size_divisible_by_two_to_the_depth(cls, depth, size):
    model = cls(base_filters=4, depth=depth).eval()
    assert model.size_divisor == 2**depth
    assert model(torch.rand(1, 1, *size)).shape == (1, 1, *size)


@pytest.mark.parametrize("cls", NATIVE)
def test_native_models_reject_size_not_divisible_by_two_to_the_depth_naming_size_and_divisor(cls):
    model = cls(base_filters=4, depth=4)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 16.*60x64"):
        model(torch.rand(1, 1, 60, 64))


def test_native_models_reject_wrong_channel_count_and_bad_options():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        UNet(base_filters=4, depth=2)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="layer")
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=0)


def test_attention_gate_scales_skip_features_by_coefficients_from_the_coarser_level():
    gate = AttentionGate(skip_channels=8, gate_channels=16, inter_channels=4, norm="none")
    x, g = torch.rand(2, 8, 32, 32), torch.rand(2, 16, 16, 16)
    assert gate(x, g).shape == x.shape
    # Saturating psi to a large negative bias closes the gate: the gated skip becomes the output bias only.
    with torch.no_grad():
        gate.psi.bias.fill_(-1e4)
    out = gate(x, g)
    bias = gate.out[0].bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, bias.expand_as(out), rtol=0, atol=1e-6)


def test_attention_and_residual_variants_have_more_parameters_than_plain_unet():
    n = [sum(p.numel() for p in cls(base_filters=8, depth=3).parameters()) for cls in NATIVE]
    assert n[0] < n[1] < n[2]


@pytest.mark.parametrize("arch", ["Unet", "FPN", "unetplusplus"])
def test_smp_factory_builds_one_channel_models_offline(no_network, arch):
    model = build_smp(arch=arch, encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=1)
    d = model.size_divisor
    x = torch.rand(1, 1, 2 * 32, 3 * 32)
    assert d in (1, 32) and model.eval()(x).shape == (1, 1, 64, 96)


def test_smp_factory_unknown_arch_lists_available_architectures():
    with pytest.raises(ValueError, match="Available: .*FPN.*Unet"):
        build_smp(arch="NotANet")
    assert "Unet" in available_architectures()


def test_smp_factory_refuses_pretrained_weights_unless_download_explicitly_allowed(no_network):
    with pytest.raises(ValueError, match="allow_download"):
        build_smp(encoder_weights="imagenet")


def test_smp_factory_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown smp encoder 'resnet9000'"):
        build_smp(encoder_name="resnet9000")


@pytest.mark.parametrize("name", ["unet", "attention_unet", "attention_resunet", "smp"])
def test_model_configs_start_with_a_comment_and_instantiate_offline(no_network, name):
    path = CONF / "model" / f"{name}.yaml"
    assert path.read_text().startswith("# ")
    cfg = OmegaConf.load(path)
    if name != "smp":
        cfg.base_filters, cfg.depth = 4, 2
    model = instantiate(cfg)
    assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def _task_cfg(scheduler: str):
    """conf/task/segmentation.yaml's task node with the LR schedule of conf/task/scheduler/<scheduler>.yaml."""
    return OmegaConf.merge(*(OmegaConf.load(CONF / "task" / f) for f in ("segmentation.yaml",
                                                                         f"scheduler/{scheduler}.yaml"))).task


def test_task_config_builds_task_with_adam_and_plateau_scheduler_on_val_jaccard():
    assert "/task/scheduler: plateau" in (CONF / "task" / "segmentation.yaml").read_text()  # the default schedule
    cfg = _task_cfg("plateau")
    task = instantiate(cfg, model=UNet(base_filters=4, depth=2))
    conf = task.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert conf["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3)
    sched = conf["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert sched["scheduler"].mode == "max" and sched["monitor"] == "val/jaccard" and sched["interval"] == "epoch"
    assert task.hparams.loss == "focal" and "model" not in task.hparams


def test_one_cycle_schedule_spans_exactly_the_runs_step_budget():
    cfg = _task_cfg("one_cycle")
    s = cfg.scheduler
    assert s.max_lr == cfg.optimizer.lr  # task.optimizer.lr sets the peak: an lr override is never silently ignored
    task = instantiate(cfg, model=UNet(base_filters=4, depth=2))
    task._trainer = SimpleNamespace(estimated_stepping_batches=15)  # what Lightning reports for 3 epochs x 5 batches
    conf = task.configure_optimizers()
    sched, opt = conf["lr_scheduler"]["scheduler"], conf["optimizer"]
    assert conf["lr_scheduler"]["interval"] == "step" and sched.total_steps == 15
    lrs = []
    for _ in range(15):  # Lightning steps an interval="step" scheduler after every optimizer step
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(s.max_lr / s.div_factor)
    peak = lrs.index(max(lrs))
    assert max(lrs) <= s.max_lr * (1 + 1e-9) and 0 < peak < 14  # warms up, then decays within the run
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    # the last step is at the end of the cosine, ~max_lr / (div_factor x final_div_factor), not mid-schedule
    assert lrs[-1] < s.max_lr / s.div_factor / 10
    task._trainer = SimpleNamespace(estimated_stepping_batches=float("inf"))  # max_epochs=-1 and no max_steps
    with pytest.raises(ValueError, match="finite budget"):
        task.configure_optimizers()


MITO_PRESETS = ["mito_quick", "mito_unet", "mito_attention_unet", "mito_attention_resunet"]


@pytest.mark.parametrize("preset", MITO_PRESETS)
def test_mito_presets_compose_and_optimise_val_jaccard(preset):
    # header and validity of every conf/ file: tests/unit/test_configs.py
    from calib_seg.config import compose

    cfg = compose([f"experiment={preset}"])
    assert cfg.optimized_metric == "val/jaccard"
    assert cfg.task._target_ == "calib_seg.tasks.segmentation.SegmentationTask"
    # mito_quick keeps the seed's focal loss; the field-size presets get the loss measured better on real EM
    assert cfg.task.loss == ("focal" if preset == "mito_quick" else "bce_dice")
    assert cfg.task.optimizer.lr == pytest.approx(1e-3)
    assert cfg.model._target_.startswith("calib_seg.models.unet.")


def test_the_seed_grid_keeps_the_seed_recipe_whatever_the_presets_recommend():
    from calib_seg.config import compose

    cfg = compose(["hparams_search=hpo_mito"])
    assert cfg.model._target_ == "calib_seg.models.unet.UNet" and cfg.model.base_filters == 64
    assert (cfg.task.loss, cfg.task.threshold, cfg.task.tta) == ("focal", 0.5, False)
    assert dict(cfg.task.postprocess) == {"median": 0, "min_size": 0} and cfg.data.augment is True
    preset = compose(["experiment=mito_unet"])  # the preset alone recommends more (headline still at 0.5)
    assert (preset.task.loss, preset.task.threshold, preset.task.tta, preset.task.postprocess) == (
        "bce_dice", 0.5, "auto", "auto")
    # the CPU preset validates on 6 slices, too few to decide TTA; it keeps it on (measured on two held-out blocks)
    cpu = compose(["experiment=mito_lucchi_cpu"])
    assert (cpu.task.loss, cpu.task.threshold, cpu.task.tta, cpu.task.postprocess) == ("bce_dice", 0.5, True, "auto")
    # both recommend elastic warps (measured on three held-out blocks); the grid above keeps the seed's plain default
    for recommended in (preset, cpu):
        assert recommended.data.augment._target_.endswith("PairAugment") and recommended.data.augment.elastic_alpha == 6


def test_checkpoint_of_config_built_task_loads_with_weights_only_and_restores_the_model(tmp_path):
    # Lightning's ckpt_path="best" uses torch.load(weights_only=True): hparams must be plain values, not the
    # Hydra optimizer/scheduler partials or ListConfigs.
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from calib_seg.tasks.segmentation import SegmentationTask

    cfg = OmegaConf.load(CONF / "task" / "segmentation.yaml").task  # the file sets task_name/optimized_metric too
    task = instantiate(cfg, model=UNet(base_filters=4, depth=2))
    batch = {"image": torch.rand(2, 1, 16, 16), "mask": (torch.rand(2, 1, 16, 16) > 0.8).float()}
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        devices=1,
    )
    loader = DataLoader([batch], batch_size=None)
    trainer.fit(task, loader, loader)
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert "Adam" in ckpt["hyper_parameters"]["optimizer"]
    restored = SegmentationTask.load_from_checkpoint(path, model=UNet(base_filters=4, depth=2))
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(restored.eval()(x), task.eval()(x))
