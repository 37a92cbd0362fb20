"""Test-time augmentation and post-processing of segmentation probabilities, and the EM augmentations.

TTA of an exactly flip/rotation-equivariant model gives its plain prediction; TTA of a model that is not gives
something else (so the test can fail). Post-processing reaches the test step, ``predict`` and the config path
``evaluate`` uses, and all three give the same masks. Tiny tensors only.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader

from calib_seg.data.augment import PairAugment, elastic_warp, gaussian_blur
from calib_seg.predict import predict_probabilities
from calib_seg.tasks.seg_inference import D4, PostProcess, make_postprocess, postprocess_proba, tta_proba
from calib_seg.tasks.segmentation import SegmentationTask


class _Isotropic(nn.Module):
    """Conv with a kernel symmetric under all flips/rotations: exactly D4-equivariant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).view(1, 1, 3, 3))
            self.conv.bias.fill_(-4.0)

    def forward(self, x):
        return self.conv(x) * 3.0


class _Shifted(nn.Module):
    """Logits from the pixel to the right: not equivariant under flips."""

    def forward(self, x):
        return (torch.roll(x, 1, dims=-1) - 0.5) * 8.0


def _blobs(n: int = 2, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a few bright squares (one tiny), masks = the squares."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        for _ in range(3):
            y, x, s = rng.integers(2, size - 14), rng.integers(2, size - 14), rng.integers(6, 12)
            masks[i, 0, y : y + s, x : x + s] = 1
        masks[i, 0, 1:3, size - 3 : size - 1] = 1  # a 4-pixel object
    images = np.clip(0.2 + 0.6 * masks + rng.normal(0, 0.05, masks.shape), 0, 1).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(masks)


def test_d4_has_eight_distinct_transforms():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    outs = {tuple((torch.rot90(x.flip(-1) if f else x, k, (-2, -1))).flatten().tolist()) for k, f in D4}
    assert len(D4) == 8 and len(outs) == 8


def test_tta_of_an_equivariant_model_is_the_plain_prediction_and_not_otherwise():
    images, _ = _blobs(n=2, size=40)
    images = images[..., :32]  # non-square: rotations swap H and W
    iso = _Isotropic().eval()
    with torch.no_grad():
        plain = torch.sigmoid(iso(images))
        assert torch.allclose(tta_proba(lambda x: torch.sigmoid(iso(x)), images), plain, atol=1e-6)
        shifted = _Shifted()
        p = torch.sigmoid(shifted(images))
        assert (tta_proba(lambda x: torch.sigmoid(shifted(x)), images) - p).abs().max() > 0.1


def test_small_object_removal_matches_scipy_component_sizes_and_median_is_scipys():
    rng = np.random.default_rng(1)
    probs = torch.from_numpy(rng.random((1, 1, 40, 40)).astype(np.float32))
    out = postprocess_proba(probs, PostProcess(min_size=5, threshold=0.5))[0, 0].numpy()
    labels, n = ndimage.label(probs[0, 0].numpy() > 0.5, structure=np.ones((3, 3)))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    small = np.isin(labels, np.arange(1, n + 1)[sizes < 5])
    assert small.any() and (~small & (labels > 0)).any()
    assert np.all(out[small] == 0) and np.array_equal(out[~small], probs[0, 0].numpy()[~small])
    med = postprocess_proba(probs, PostProcess(median=3))[0, 0].numpy()
    assert np.allclose(med, ndimage.median_filter(probs[0, 0].numpy(), size=3, mode="reflect"))
    assert postprocess_proba(probs, PostProcess()) is probs


def test_postprocess_config_is_validated():
    with pytest.raises(ValueError, match="odd"):
        make_postprocess({"median": 4}, 0.5)
    with pytest.raises(ValueError, match="unknown"):
        make_postprocess({"min_area": 4}, 0.5)
    assert not make_postprocess(None, 0.5).active


def _jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / max((pred | truth).sum(), 1))


def test_tta_and_postprocess_are_the_same_in_test_step_predict_and_the_evaluate_config_path(run_cfg):
    images, masks = _blobs(n=2, size=48)
    batches = DataLoader([{"image": images[i : i + 1], "mask": masks[i : i + 1]} for i in range(2)], batch_size=None)
    # the config path calib_seg.evaluate and predict use (checkpoints.load_task instantiates cfg.task like this)
    cfg = run_cfg(["experiment=mito_quick", "task.tta=true", "task.postprocess.min_size=10",
                   "task.postprocess.median=3"])
    task = instantiate(cfg.task, model=_Shifted())
    assert task.tta and task.postprocess == PostProcess(median=3, min_size=10, threshold=0.5)
    plain = SegmentationTask(model=_Shifted())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    got = trainer.test(task, dataloaders=batches, verbose=False)[0]["test/jaccard"]
    base = trainer.test(plain, dataloaders=batches, verbose=False)[0]["test/jaccard"]
    probs = [predict_probabilities(task, images[i, 0].numpy(), None) for i in range(2)]
    pred = np.stack(probs) > 0.5
    truth = masks[:, 0].numpy() > 0
    assert got == pytest.approx(_jaccard(pred, truth), abs=1e-6)
    plain_pred = np.stack([predict_probabilities(plain, images[i, 0].numpy(), None) for i in range(2)]) > 0.5
    assert base == pytest.approx(_jaccard(plain_pred, truth), abs=1e-6)
    assert abs(got - base) > 1e-3  # the extras changed the result, so the equality above is not vacuous
    assert "flips/rotations" in task.metric_definitions()["test/jaccard"]


def test_elastic_warp_and_blur_change_the_image_and_keep_the_mask_aligned():
    _, masks = _blobs(n=1, size=64, seed=3)
    image = masks[0].clone()  # image = mask: after a paired warp they must still coincide
    aug = PairAugment(flip=False, rot90=False, brightness=0, contrast=0, gamma=0, elastic_alpha=6.0,
                      elastic_grid=16, elastic_prob=1.0)
    changed = 0
    for seed in range(5):
        img, msk = aug(image, masks[0], torch.Generator().manual_seed(seed))
        assert img.shape == image.shape and msk.dtype == masks.dtype
        assert set(torch.unique(msk).tolist()) <= {0.0, 1.0}
        changed += int(not torch.equal(msk, masks[0]))
        assert _jaccard((img > 0.5).numpy(), (msk > 0.5).numpy()) > 0.9
    assert changed >= 4
    a = elastic_warp(image, masks[0], 6.0, 16, torch.Generator().manual_seed(0))
    b = elastic_warp(image, masks[0], 6.0, 16, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    blurred = gaussian_blur(image, 1.5)
    radius = int(round(3 * 1.5))
    ref = ndimage.gaussian_filter(image[0].numpy(), 1.5, mode="mirror", truncate=radius / 1.5)
    assert not torch.equal(blurred, image) and np.allclose(blurred[0].numpy(), ref, atol=1e-5)
    aug_blur = PairAugment(flip=False, rot90=False, brightness=0, contrast=0, gamma=0, blur_sigma=2.0, blur_prob=1.0)
    img, msk = aug_blur(image, masks[0], torch.Generator().manual_seed(0))
    assert torch.equal(msk, masks[0]) and not torch.equal(img, image)
