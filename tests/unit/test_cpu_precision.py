"""``${cpu_precision:}``: bf16 autocast only on CPUs with native bfloat16 units, float32 elsewhere."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from calib_seg import resolvers


def test_native_bf16_units_select_bf16_mixed(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolvers.cpu_precision() == "bf16-mixed"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolvers.cpu_precision() == "bf16-mixed"


def test_a_cpu_without_them_keeps_float32(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert resolvers.cpu_precision() == "32-true"
    # a torch without the probes at all (older builds): float32, no error
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert resolvers.cpu_precision() == "32-true"


def test_the_resolver_is_registered_and_resolves_in_a_config():
    resolvers.register()
    cfg = OmegaConf.create({"trainer": {"precision": "${cpu_precision:}"}})
    assert cfg.trainer.precision == resolvers.cpu_precision()


def test_the_real_em_cpu_preset_trains_at_the_resolved_precision():
    from calib_seg.config import compose

    cfg = compose(["experiment=mito_lucchi_cpu"])
    assert cfg.trainer.precision == resolvers.cpu_precision()
    assert cfg.trainer.accelerator == "cpu"  # the resolver answers for this machine's CPU only
