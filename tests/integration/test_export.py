"""BioImage Model Zoo export (issue 15), checked with the ecosystem's own libraries.

One tiny density run and one tiny segmentation run are trained per module (each asserts it learned), exported
once, and the packages are checked: bioimageio.spec validates them, bioimageio.core's model test passes,
predictions through bioimageio.core equal ``calib_seg.predict`` on whole images within stated tolerances, an
older checkpoint without stored normalisation is refused, and nothing is fetched from the network.
Skipped when the ``export`` extra is not installed (``pip install -c constraints.txt -e ".[export]"``).
"""

from __future__ import annotations

import csv
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

for _mod in ("bioimageio.core", "bioimageio.spec", "onnx", "onnxruntime"):
    pytest.importorskip(_mod, reason=f'{_mod} missing: the export extra is not installed (pip install -e ".[export]")')

from calib_seg.checkpoints import load_task, resolve_checkpoint  # noqa: E402
from calib_seg.export import export, main  # noqa: E402
from calib_seg.export_bioimageio import offline  # noqa: E402
from calib_seg.predict import predict, predict_probabilities  # noqa: E402
from calib_seg.train import run  # noqa: E402
from helpers.configs import TINY_BEADS, compose_run_cfg  # noqa: E402
from helpers.tensorboard import EVENT_FILES  # noqa: E402

WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
DENSITY_LEARN = [*TINY_BEADS, "data.source.n_per_level=24", "trainer.max_epochs=25", "task.optimizer.lr=3e-3", "~callbacks.early_stopping"]
SEG_LEARN = ["task=segmentation", "model=unet", "data=mito_synth", "optimized_metric=val/jaccard",
             "model.base_filters=8", "model.depth=2", "data.patch_size=64", "data.patches_per_epoch=128",
             "data.source.n_train=2", "data.source.n_val=1", "data.source.n_test=1", "data.source.height=192",
             "data.source.width=192", "trainer.max_epochs=6", "trainer.enable_progress_bar=false", "logger=none",
             "torch_threads=1", "task.loss=focal_dice", "task.optimizer.lr=3e-3", "~callbacks.early_stopping"]


def _train(overrides: list[str], out: Path):
    cfg = compose_run_cfg(overrides, out)
    record = run(cfg)
    GlobalHydra.instance().clear()
    return cfg, record


def _export_offline(source: Path, out: Path, **kw) -> Path:
    with offline() as attempts:
        rdf = export(source, out, **kw)
    assert attempts == [], attempts  # nothing fetched, not even a name lookup
    return rdf


@pytest.fixture(scope="module")
def density(tmp_path_factory):
    """(run config, record, rdf.yaml) of a tiny density model that learned (test R² >= 0.9)."""
    root = tmp_path_factory.mktemp("density")
    cfg, record = _train(DENSITY_LEARN, root / "run")
    assert record["metrics"]["test/r2"] >= 0.9, record["metrics"]
    return cfg, record, _export_offline(root / "run", root / "package")


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    """(run config, record, rdf.yaml) of a tiny U-Net well above the all-foreground baseline; 8-bit input."""
    root = tmp_path_factory.mktemp("segmentation")
    cfg, record = _train(SEG_LEARN, root / "run")
    m = record["metrics"]
    assert m["test/jaccard"] > m["test/jaccard_all_foreground"] + 0.1, m
    return cfg, record, _export_offline(root / "run", root / "package", input_max=255)


def _bioimageio_predict(rdf: Path, raws: list[np.ndarray], weight_format: str) -> list[np.ndarray]:
    """Whole images (raw values, 2-D) through bioimageio.core with one weight format; the output arrays."""
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import create_sample_for_model

    model = load_model_description(rdf)
    # the pipeline's own whole-sample path (what bioimageio.core.predict runs without a block size); predict()
    # itself would enter and leave the pipeline context once per image, which 0.11 cannot do twice
    with create_prediction_pipeline(model, weight_format=weight_format, devices=["cpu"]) as pp:
        outs = [pp.predict_sample_without_blocking(create_sample_for_model(model, inputs=raw[None, None],
                                                                           sample_id=i))
                for i, raw in enumerate(raws)]
    return [next(iter(o.members.values())).data.to_numpy() for o in outs]


def _check_valid_and_tested(rdf: Path) -> dict:
    from bioimageio.core import test_model
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(rdf, perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    assert "status          | passed" in (rdf.parent / "validation.md").read_text()  # the export's own test
    # and once more, independently of the export, for one weight format
    assert test_model(rdf, weight_format="onnx", devices=["cpu"]).status == "passed"
    content = OmegaConf.to_container(OmegaConf.load(rdf))
    assert sorted(content["weights"]) == sorted(WEIGHT_FORMATS)
    assert "http" not in rdf.read_text()  # no URL to check online, so validation never fetches
    assert list(rdf.parent.glob("*.zip")) and (rdf.parent / "cover.png").stat().st_size > 10_000
    return content


# ------------------------------------------------------------------------------------------------ density
def test_density_package_validates_passes_its_test_and_states_the_training_normalisation(density):
    cfg, record, rdf = density
    content = _check_valid_and_tested(rdf)
    task = load_task(resolve_checkpoint(Path(cfg.paths.output_dir)))
    pre = [p["kwargs"] for p in content["inputs"][0]["preprocessing"] if p["id"] == "scale_linear"]
    assert pre[0]["gain"] == pytest.approx(1 / 4095)  # synthetic 12-bit camera counts -> [0, 1]
    assert pre[1]["gain"] == pytest.approx(1 / float(task.input_std))
    assert pre[1]["offset"] == pytest.approx(-float(task.input_mean) / float(task.input_std))
    post = content["outputs"][0]["postprocessing"][0]
    assert post["id"] == "scale_linear"
    assert (post["kwargs"]["gain"], post["kwargs"]["offset"]) == pytest.approx(
        (float(task.target_tf.std), float(task.target_tf.mean)))
    assert content["inputs"][0]["axes"][2]["scale"] == 8.0  # TINY_BEADS: 8 µm per pixel
    assert content["config"]["calib_seg"]["test_metrics"]["test/r2"] == pytest.approx(record["metrics"]["test/r2"])


def test_density_through_bioimageio_core_equals_calib_seg_predict(density, tmp_path):
    """Every weight format, six whole test images: relative difference <= 1e-4 (float32 rounding)."""
    import tifffile

    cfg, _, rdf = density
    dm = instantiate(cfg.data)
    beads = dm.prepare()
    folder = tmp_path / "images"
    folder.mkdir()
    raws = [beads.images[j] for j in dm.split.test[:6]]
    for i, raw in enumerate(raws):
        tifffile.imwrite(folder / f"{i}.tif", raw)
    pcfg = OmegaConf.create({"ckpt_path": str(resolve_checkpoint(Path(cfg.paths.output_dir))), "input": str(folder),
                             "output": str(tmp_path / "pred.csv"), "bit_depth": None, "pixel_size_um": None,
                             "trainer": {"accelerator": "cpu"}})
    with predict(pcfg).open() as f:
        expected = np.array([float(r["predicted_beads_per_mm2"]) for r in csv.DictReader(f)])
    assert np.ptp(expected) > 1000  # a model that learned spans the dilution series
    for fmt in WEIGHT_FORMATS:
        got = np.array([y.item() for y in _bioimageio_predict(rdf, raws, fmt)])
        np.testing.assert_allclose(got, expected, rtol=1e-4, err_msg=fmt)


# ------------------------------------------------------------------------------------------------ segmentation
def test_segmentation_package_validates_passes_its_test_and_carries_sigmoid_and_halo(segmentation):
    from calib_seg.export_recipe import halo_and_sizes, receptive_field_radius

    cfg, _, rdf = segmentation
    content = _check_valid_and_tested(rdf)
    out = content["outputs"][0]
    assert [p["id"] for p in out["postprocessing"]][0] == "sigmoid"
    task = load_task(resolve_checkpoint(Path(cfg.paths.output_dir)))
    halo, size_min, step = halo_and_sizes(receptive_field_radius(task.model, 4), 4)
    assert [a.get("halo") for a in out["axes"][2:]] == [halo, halo]
    assert content["inputs"][0]["axes"][2]["size"] == {"min": size_min, "step": step}
    assert content["inputs"][0]["data"]["type"] == "uint8"  # exported with --input-max 255


def test_segmentation_through_bioimageio_core_equals_calib_seg_on_a_whole_image(segmentation, tmp_path):
    """A whole 192x192 test image, every weight format.

    Against calib_seg's untiled pass: identical (|Δp| <= 1e-5) farther than the halo from the border; inside that
    band they may differ, because bioimageio consumers reflect-pad the image by the halo while calib_seg's
    convolutions zero-pad. Against ``calib_seg.predict`` (which tiles at the 64 px training patch with cosine
    blending): masks agree on >= 99 % of pixels.
    """
    from PIL import Image

    cfg, _, rdf = segmentation
    raw = np.load(rdf.parent / "test_input.npy")[0, 0]
    assert raw.dtype == np.uint8 and raw.shape == (192, 192)
    Image.fromarray(raw).save(tmp_path / "slice.png")
    ckpt = resolve_checkpoint(Path(cfg.paths.output_dir))
    pcfg = OmegaConf.create({"ckpt_path": str(ckpt), "input": str(tmp_path / "slice.png"), "output": str(tmp_path / "o"),
                             "bit_depth": None, "pixel_size_um": None, "save_probabilities": True,
                             "trainer": {"accelerator": "cpu"}})
    predict(pcfg)
    import tifffile

    tiled = tifffile.imread(tmp_path / "o" / "slice_prob.tif")
    untiled = predict_probabilities(load_task(ckpt), raw.astype(np.float32) / 255, None)
    halo = OmegaConf.load(rdf).outputs[0].axes[2].halo
    inner = (slice(halo, -halo), slice(halo, -halo))
    for fmt in WEIGHT_FORMATS:
        prob = _bioimageio_predict(rdf, [raw], fmt)[0][0, 0]
        assert prob.shape == raw.shape
        assert np.abs(prob - untiled)[inner].max() <= 1e-5, fmt
        assert ((prob >= 0.5) == (tiled >= 0.5)).mean() >= 0.99, fmt
        assert ((prob >= 0.5) == (untiled >= 0.5)).mean() >= 0.99, fmt


# ------------------------------------------------------------------------------------------------ refusals
def test_checkpoint_without_stored_normalisation_is_refused_clearly(density, tmp_path):
    """What a checkpoint of an older calib_seg looks like: no input statistics or fitted target transform."""
    cfg, _, _ = density
    old = tmp_path / "old_run"
    shutil.copytree(cfg.paths.output_dir, old, ignore=shutil.ignore_patterns(EVENT_FILES))
    ckpt = resolve_checkpoint(old)
    state = torch.load(ckpt, weights_only=False)
    for key in ("input_mean", "input_std", "data_fitted", "target_tf.mean", "target_tf.std", "target_tf.fitted"):
        del state["state_dict"][key]
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=r"no stored normalisation \(input_mean, .* missing\).*older calib_seg"):
        export(old, tmp_path / "package")
    assert not (tmp_path / "package").exists()  # refused before anything was written


def test_cli_names_the_problem_and_exits_2_on_bad_input(tmp_path, capsys):
    assert main([str(tmp_path / "no_such_run"), "--out", str(tmp_path / "p")]) == 2
    assert "neither a checkpoint file nor a run folder" in capsys.readouterr().err


def test_offline_guard_refuses_and_records_connection_attempts():
    """The guard the 'nothing downloaded' checks rely on can fail: it sees a lookup and a connection."""
    with offline() as attempts:
        with pytest.raises(OSError, match="offline"):
            socket.getaddrinfo("example.org", 80)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError, match="offline"):
            s.connect(("192.0.2.1", 80))
    assert attempts == ["lookup example.org", "connect ('192.0.2.1', 80)"]
