"""EM segmentation data: EPFL stacks, image/mask folders, conversions, augmentation, data module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from calib_seg.data.augment import PairAugment
from calib_seg.data.patches import RandomPatchDataset, tile_starts
from calib_seg.data.segmentation import SegmentationDataModule
from calib_seg.data.sources.epfl import EPFLSource
from calib_seg.data.sources.image_folder import FolderSource


# ------------------------------------------------------------------------------------------------ helpers
def write_epfl(root: Path, n_train=10, n_test=4, h=64, w=80, mask_values=(0, 255), n_train_masks=None):
    """Small EPFL-layout stacks; slice z of the training stack has grey level 10*z+5 so patches reveal z."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = np.stack([np.full((h, w), 10 * z + 5, np.uint8) for z in range(n_train)])
    masks = np.zeros((n_train_masks or n_train, h, w), np.uint8)
    masks[:, 10:30, 20:50] = mask_values[1]
    test = rng.integers(0, 256, (n_test, h, w), dtype=np.uint8)
    tmask = np.zeros((n_test, h, w), np.uint8)
    tmask[:, 5:15, 5:25] = 255
    tifffile.imwrite(root / "training.tif", train, photometric="minisblack")
    tifffile.imwrite(root / "training_groundtruth.tif", masks, photometric="minisblack")
    tifffile.imwrite(root / "testing.tif", test, photometric="minisblack")
    tifffile.imwrite(root / "testing_groundtruth.tif", tmask, photometric="minisblack")
    return root


def write_pair(
    split_dir: Path, stem: str, img: np.ndarray, mask: np.ndarray, img_ext=".png", mask_ext=".png"
):
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "masks").mkdir(parents=True, exist_ok=True)
    for arr, sub, ext in ((img, "images", img_ext), (mask, "masks", mask_ext)):
        path = split_dir / sub / f"{stem}{ext}"
        if ext == ".png":
            Image.fromarray(arr).save(path)
        else:
            tifffile.imwrite(path, arr, photometric="minisblack")


def blob_mask(h=48, w=64, value=255):
    m = np.zeros((h, w), np.uint8)
    m[10:20, 10:30] = value
    return m


# -------------------------------------------------------------------------------------------------- EPFL
def test_epfl_reader_memory_maps_stacks_and_splits_validation_from_end(tmp_path):
    src = EPFLSource(write_epfl(tmp_path / "epfl"), val_fraction=0.2)
    assert isinstance(src._stacks["training.tif"], np.memmap)
    assert src.train_slices == (0, 8) and src.val_slices == (8, 10)
    train, val, test = src.split("train"), src.split("val"), src.split("test")
    assert len(train) == 8 and len(val) == 2 and len(test) == 4
    assert train.shapes()[0] == (64, 80) and test.shapes()[0] == (64, 80)


def test_epfl_training_patches_never_come_from_validation_slices(tmp_path):
    src = EPFLSource(write_epfl(tmp_path / "epfl", n_train=10), val_fraction=0.3, val_gap=1)
    ds = RandomPatchDataset(src.split("train"), patch_size=32, length=200, seed=0)
    seen = {int(round(float(ds[i]["image"][0, 0, 0]) * 255 - 5)) // 10 for i in range(200)}
    assert seen <= set(range(0, 6)) and len(seen) == 6  # slice 6 is the gap, 7..9 are validation
    dm = SegmentationDataModule(src, patch_size=32, patches_per_epoch=8, batch_size=4)
    dm.setup("fit")
    val_levels = {
        int(round(float(b["image"][i, 0, 0, 0]) * 255 - 5)) // 10
        for b in dm.val_dataloader()
        for i in range(len(b["image"]))
    }
    assert val_levels == {7, 8, 9}


def test_epfl_stacks_with_different_slice_counts_name_both_files(tmp_path):
    root = write_epfl(tmp_path / "epfl", n_train=10, n_train_masks=9)
    with pytest.raises(
        ValueError, match=r"different slice counts.*training\.tif.*10.*training_groundtruth\.tif.*9"
    ):
        EPFLSource(root)


def test_epfl_mask_values_other_than_0_1_or_0_255_are_named(tmp_path):
    root = write_epfl(tmp_path / "epfl", mask_values=(0, 128))
    with pytest.raises(ValueError, match=r"training_groundtruth\.tif.*\[0, 128\]"):
        EPFLSource(root)


def test_epfl_missing_folder_or_files_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*training\.tif"):
        EPFLSource(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing training\.tif"):
        EPFLSource(tmp_path / "empty")


def test_patch_size_larger_than_the_images_is_a_clear_error(tmp_path):
    dm = SegmentationDataModule(EPFLSource(write_epfl(tmp_path / "epfl")), patch_size=128)
    with pytest.raises(ValueError, match="patch_size=128 is larger than training image"):
        dm.setup("fit")


# ------------------------------------------------------------------------------------------------ folder
def test_folder_reader_pairs_images_and_masks_by_stem_across_formats(tmp_path):
    rng = np.random.default_rng(0)
    for stem, iext, mext in (("b", ".png", ".tif"), ("a", ".tif", ".png"), ("c", ".png", ".png")):
        img = rng.integers(0, 256, (48, 64), dtype=np.uint8)
        img[0, 0] = ord(stem)  # marks which file the image came from
        write_pair(
            tmp_path / "ds" / "train", stem, img, blob_mask(value=1 if stem == "a" else 255), iext, mext
        )
    src = FolderSource(tmp_path / "ds", val_fraction=0.34, seed=0)
    tr, va = src.split("train"), src.split("val")
    assert sorted(tr.names + va.names) == ["a", "b", "c"] and len(va) == 1
    for split in (tr, va):
        for img, m, name in zip(split.images, split.masks, split.names):
            assert round(float(img[0, 0]) * 255) == ord(name)
            assert set(np.unique(m).tolist()) == {0, 1}


def test_folder_without_val_holds_out_whole_training_images(tmp_path):
    for i in range(8):
        write_pair(tmp_path / "ds" / "train", f"im{i}", np.full((40, 40), i, np.uint8), blob_mask(40, 40))
    src = FolderSource(tmp_path / "ds", val_fraction=0.25, seed=3)
    assert len(src.split("val")) == 2 and not set(src.held_out) & set(src.split("train").names)
    dm = SegmentationDataModule(src, patch_size=16, patches_per_epoch=64, batch_size=8, augment=False)
    dm.setup("fit")
    train_levels = {round(float(v) * 255) for b in dm.train_dataloader() for v in b["image"][:, 0, 0, 0]}
    held = {int(n[2:]) for n in src.held_out}
    assert train_levels and not train_levels & held


def test_folder_with_single_training_image_and_no_val_is_an_error(tmp_path):
    write_pair(tmp_path / "ds" / "train", "only", np.zeros((32, 32), np.uint8), blob_mask(32, 32))
    with pytest.raises(ValueError, match="need at least 2 training images"):
        FolderSource(tmp_path / "ds")


def test_folder_missing_mask_is_a_clear_error(tmp_path):
    write_pair(tmp_path / "ds" / "train", "a", np.zeros((32, 32), np.uint8), blob_mask(32, 32))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "ds" / "train" / "images" / "lonely.png")
    with pytest.raises(FileNotFoundError, match=r"no mask with the same stem.*lonely\.png"):
        FolderSource(tmp_path / "ds")


def test_folder_image_mask_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path / "ds" / "train", "a", np.zeros((48, 64), np.uint8), blob_mask(40, 64))
    with pytest.raises(
        ValueError, match=r"shape mismatch.*images/a\.png.*\(48, 64\).*masks/a\.png.*\(40, 64\)"
    ):
        FolderSource(tmp_path / "ds")


def test_folder_non_binary_mask_values_are_named(tmp_path):
    m = blob_mask()
    m[0, 0] = 7
    write_pair(tmp_path / "ds" / "train", "a", np.zeros((48, 64), np.uint8), m)
    with pytest.raises(ValueError, match=r"masks/a\.png.*\[0, 7, 255\]"):
        FolderSource(tmp_path / "ds")


def test_folder_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere.*train/images"):
        FolderSource(tmp_path / "nothere")
    (tmp_path / "empty" / "train" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "masks").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no images"):
        FolderSource(tmp_path / "empty")


def test_folder_fingerprint_changes_when_a_file_changes(tmp_path):
    for s in ("a", "b"):
        write_pair(tmp_path / "ds" / "train", s, np.zeros((32, 32), np.uint8), blob_mask(32, 32))
    fp1 = FolderSource(tmp_path / "ds").fingerprint()["files"]["sha256"]
    write_pair(tmp_path / "ds" / "train", "a", np.ones((32, 32), np.uint8), blob_mask(32, 32))
    assert FolderSource(tmp_path / "ds").fingerprint()["files"]["sha256"] != fp1


# ------------------------------------------------------------------------------------ flat folder layout
def write_volume(root: Path, n=12, step=4, h=32, w=32):
    """A flat folder of ``n`` slices named like the Lucchi set (vol_001, vol_005, ...), written in shuffled
    order; slice k (in name order) has grey level 10*k+5 so a patch reveals its slice."""
    names = [f"vol_{1 + step * k:03d}" for k in range(n)]
    for k in np.random.default_rng(0).permutation(n):
        write_pair(root, names[k], np.full((h, w), 10 * k + 5, np.uint8), blob_mask(h, w))
    return names


def _positions(split, names):
    return [names.index(n) for n in split.names]


@pytest.mark.parametrize(
    ("block", "val_pos", "test_pos"),
    [("last", range(6, 9), range(9, 12)), ("first", range(3, 6), range(0, 3)),
     ("middle", range(3, 6), range(6, 9))],
)
def test_flat_layout_holds_out_contiguous_blocks_that_never_meet_training(tmp_path, block, val_pos, test_pos):
    names = write_volume(tmp_path / "vol")
    src = FolderSource(tmp_path / "vol", val_fraction=0.25, test_fraction=0.25, block=block)
    tr, va, te = (src.split(s) for s in ("train", "val", "test"))
    assert _positions(va, names) == list(val_pos) and _positions(te, names) == list(test_pos)
    assert sorted(_positions(tr, names) + _positions(va, names) + _positions(te, names)) == list(range(12))
    fp = src.fingerprint()
    assert fp["layout"] == "flat" and fp["val_held_out_from_train"] == va.names
    assert fp["held_out_blocks"]["val"] == {"slices": [val_pos[0], val_pos[-1] + 1], "names": va.names}
    assert fp["held_out_blocks"]["test"]["names"] == te.names
    # the pixels follow the names: a training patch never shows a held-out slice's grey level
    dm = SegmentationDataModule(src, patch_size=16, patches_per_epoch=64, batch_size=8, augment=False)
    dm.setup("fit")
    seen = {round(float(v) * 255) for b in dm.train_dataloader() for v in b["image"][:, 0, 0, 0]}
    assert seen and seen <= {10 * k + 5 for k in _positions(tr, names)}


def test_flat_layout_explicit_blocks_gap_and_no_test_split(tmp_path):
    names = write_volume(tmp_path / "vol")
    src = FolderSource(tmp_path / "vol", val_block=[4, 7], test_block=[10, 12], gap=1)
    assert _positions(src.split("val"), names) == [4, 5, 6]
    assert _positions(src.split("test"), names) == [10, 11]
    assert _positions(src.split("train"), names) == [0, 1, 2, 8]  # 3, 7 and 9 are the gaps
    only_val = FolderSource(tmp_path / "vol", val_fraction=0.2)
    assert _positions(only_val.split("val"), names) == [10, 11] and len(only_val.split("train")) == 10
    with pytest.raises(FileNotFoundError, match="flat layout.*test_fraction"):
        only_val.split("test")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"val_fraction": 0.0}, "0 < val_fraction < 1"),
     ({"val_fraction": 0.6, "test_fraction": 0.4}, "their sum < 1"),
     ({"val_fraction": 0.5, "test_fraction": 0.49}, "no training slice left"),
     ({"block": "centre"}, "block must be one of"),
     ({"val_block": [3, 3]}, r"val_block=\[3, 3\] is not a non-empty range"),
     ({"val_block": [10, 13]}, "inside the 12 slices"),
     ({"val_block": [2, 5], "test_block": [4, 6]}, "overlap"),
     ({"val_block": [2, 5], "test_fraction": 0.2}, "leave test_fraction=0"),
     ({"test_block": [0, 2]}, "test_block needs val_block"),
     ({"val_block": [0, 12]}, "no training slice left")],
)
def test_flat_layout_impossible_hold_outs_are_clear_errors(tmp_path, kwargs, message):
    write_volume(tmp_path / "vol")
    with pytest.raises(ValueError, match=message):
        FolderSource(tmp_path / "vol", **kwargs)


def test_flat_layout_refuses_names_whose_order_is_not_the_slice_order(tmp_path):
    for k in (2, 10, 11):
        write_pair(tmp_path / "vol", f"s{k}", np.zeros((32, 32), np.uint8), blob_mask(32, 32))
    with pytest.raises(ValueError, match="zero-pad"):
        FolderSource(tmp_path / "vol")


def test_block_options_are_refused_for_the_split_layout(tmp_path):
    for s in ("a", "b"):
        write_pair(tmp_path / "ds" / "train", s, np.zeros((32, 32), np.uint8), blob_mask(32, 32))
    with pytest.raises(ValueError, match=r"test_fraction, block apply to the flat layout .* only"):
        FolderSource(tmp_path / "ds", test_fraction=0.2, block="first")
    assert "layout" not in FolderSource(tmp_path / "ds").fingerprint()


def test_flat_layout_reads_the_shared_lucchi_volume(shared_dir):
    """The 42 real training slices (train_001, train_005, ...): validation is the last contiguous block."""
    src = FolderSource(shared_dir / "data" / "lucchi_epfl_train", val_fraction=0.2)
    va, tr = src.split("val").names, src.split("train").names
    assert len(tr) + len(va) == 42 and len(va) == 8
    assert va == [f"train_{1 + 4 * k:03d}" for k in range(34, 42)] and max(tr) < min(va)


# ------------------------------------------------------------------------------------------- data module
def test_batches_are_float_image_and_binary_mask_dicts_and_reproducible(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        write_pair(
            tmp_path / "ds" / "train",
            f"t{i}",
            rng.integers(0, 256, (64, 64), dtype=np.uint8),
            blob_mask(64, 64),
        )
    write_pair(
        tmp_path / "ds" / "test", "x", rng.integers(0, 256, (64, 96), dtype=np.uint8), blob_mask(64, 96)
    )
    write_pair(
        tmp_path / "ds" / "test", "y", rng.integers(0, 256, (48, 64), dtype=np.uint8), blob_mask(48, 64)
    )

    def first_batch():
        dm = SegmentationDataModule(
            FolderSource(tmp_path / "ds"),
            patch_size=32,
            patches_per_epoch=8,
            batch_size=4,
            min_foreground=0.05,
            seed=5,
        )
        dm.setup("fit")
        return dm, next(iter(dm.train_dataloader()))

    dm, b = first_batch()
    assert set(b) == {"image", "mask"}
    assert b["image"].shape == (4, 1, 32, 32) and b["image"].dtype == torch.float32
    assert b["mask"].dtype == torch.float32 and set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
    assert 0 <= float(b["image"].min()) and float(b["image"].max()) <= 1
    assert torch.equal(b["image"], first_batch()[1]["image"])
    dm.setup("test")
    shapes = [
        tuple(t["image"].shape) for t in dm.test_dataloader()
    ]  # mixed sizes -> one whole image per batch
    assert sorted(shapes) == [(1, 1, 48, 64), (1, 1, 64, 96)]


def test_min_foreground_sampler_raises_the_foreground_share_of_patches(tmp_path):
    m = np.zeros((128, 128), np.uint8)
    m[40:70, 40:70] = 255  # ~5 % of the image
    for i in range(2):
        write_pair(tmp_path / "ds" / "train", f"t{i}", np.zeros((128, 128), np.uint8), m)
    split = FolderSource(tmp_path / "ds").split("train")
    plain = RandomPatchDataset(split, 32, 100, seed=0)
    strict = RandomPatchDataset(split, 32, 100, seed=0, min_foreground=0.05, min_foreground_prob=1.0)
    frac = lambda ds: np.mean([float(ds[i]["mask"].mean()) >= 0.05 for i in range(len(ds))])  # noqa: E731
    assert frac(strict) == 1.0 and frac(plain) < 0.5


def test_epochs_draw_fresh_patches():
    from calib_seg.data.patches import EpochSampler

    s = EpochSampler(4)
    first = list(s)
    s.set_epoch(1)
    assert first == [0, 1, 2, 3] and list(s) == [4, 5, 6, 7]


def test_validation_tiles_cover_the_whole_image():
    assert tile_starts(768, 256) == [0, 256, 512] and tile_starts(700, 256) == [0, 256, 444]


def test_augmentation_moves_image_and_mask_together_and_is_seeded():
    x = torch.rand(1, 32, 32)
    m = (x > 0.5).float()
    aug = PairAugment(brightness=0, contrast=0, gamma=0)
    for s in range(8):
        xa, ma = aug(x, m, torch.Generator().manual_seed(s))
        assert torch.equal((xa > 0.5).float(), ma)
    # the geometric part really transforms: across seeds, image and mask come out in more than one orientation
    geo = [aug(x, m, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.equal(xa, x) for xa, _ in geo)
    assert len({tuple(ma.flatten().tolist()) for _, ma in geo}) >= 3
    for xa, _ in geo:  # each output is one of the 8 flips/rotations of the input, not a new picture
        assert any(torch.equal(xa, torch.rot90(f, k, (-2, -1))) for f in (x, x.flip(-1)) for k in range(4))
    jit = PairAugment()
    a1, m1 = jit(x, m, torch.Generator().manual_seed(1))
    assert torch.equal(a1, jit(x, m, torch.Generator().manual_seed(1))[0])
    assert 0 <= float(a1.min()) and float(a1.max()) <= 1
    # intensity jitter changes grey values (not just their places) and never touches the mask's values
    intensity = PairAugment(flip=False, rot90=False)
    jittered = [intensity(x, m, torch.Generator().manual_seed(s)) for s in range(4)]
    assert all(not torch.allclose(xa, x, atol=1e-3) and torch.equal(ma, m) for xa, ma in jittered)


def test_empty_validation_split_is_refused():
    class NoVal:
        def split(self, name):
            from calib_seg.data.containers import SegSplit

            if name == "val":
                return SegSplit([], [], [])
            return SegSplit([np.zeros((32, 32), np.float32)], [np.zeros((32, 32), np.uint8)], ["a"])

        def fingerprint(self):
            return {}

    with pytest.raises(ValueError, match="val split .* is empty"):
        SegmentationDataModule(NoVal(), patch_size=16).setup("fit")


def test_lightning_trainer_draws_new_patches_every_epoch(tmp_path):
    import pytorch_lightning as pl

    rng = np.random.default_rng(0)
    for i in range(2):
        write_pair(
            tmp_path / "ds" / "train",
            f"t{i}",
            rng.integers(0, 256, (64, 64), dtype=np.uint8),
            blob_mask(64, 64),
        )
    seen: list[list[float]] = []

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def on_train_epoch_start(self):
            seen.append([])

        def training_step(self, batch, _):
            seen[-1].append(float(batch["image"].sum()))
            return (self.w * batch["image"]).mean()

        def validation_step(self, batch, _):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = SegmentationDataModule(
        FolderSource(tmp_path / "ds"), patch_size=16, patches_per_epoch=8, batch_size=4
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert len(seen) == 2 and len(seen[0]) == 2 and seen[0] != seen[1]


def test_epfl_split_pickles_without_copying_memory_mapped_stacks(tmp_path):
    import pickle

    split = EPFLSource(write_epfl(tmp_path / "epfl", n_train=10, h=256, w=256)).split("train")
    blob = pickle.dumps(split)
    assert len(blob) < 10_000  # the stack is re-mapped on load, not serialised (8 slices = 512 KiB)
    again = pickle.loads(blob)
    assert np.array_equal(again.images[3], split.images[3])
