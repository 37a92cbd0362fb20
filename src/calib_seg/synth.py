"""Write synthetic data sets to disk in the layouts the folder readers take.

    python -m calib_seg.synth beads --out DIR [--preset beads_synth|beads_seed] [--n-per-level N] [--seed S]
    python -m calib_seg.synth mito  --out DIR [--n-train N --n-val N --n-test N --size PX --seed S]
    python -m calib_seg.synth dots  --out DIR [--n N --size PX --seed S]

The bead set is read back by ``data=beads_folder data.source.root=DIR``; the mito set by
``data=mito_folder data.source.root=DIR``. The dots set (synthetic fluorescence cells, flat ``images/`` +
``dots/``) is the stand-in of the dot-annotated counting protocol, ``benchmarks/b8_counting_protocol.py --data DIR``;
``data=point_folder`` reads it once split into ``DIR/{train,test}/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hydra.utils import instantiate


def _beads(args: argparse.Namespace) -> Path:
    from calib_seg.config import compose
    from calib_seg.data.sources.bead_folder import write_bead_folder

    overrides = [f"data={args.preset}"]
    if args.n_per_level is not None:
        overrides.append(f"data.source.n_per_level={args.n_per_level}")
    if args.seed is not None:
        overrides.append(f"data.source.seed={args.seed}")
    cfg = compose(overrides)
    source = instantiate(cfg.data.source)
    out = write_bead_folder(source, args.out)
    p = source.physics
    print(f"wrote {len(source.levels) * source.n_per_level} bead images ({p.image_size}x{p.image_size} px, "
          f"{p.pixel_size_um} um/px) to {out}\nread it with: python -m calib_seg.train data=beads_folder "
          f"data.source.root={Path(out).resolve()}")
    return out


#: the training command printed after writing a mito set (its patch size bounds the image size)
MITO_TRAIN = ["experiment=mito_quick", "data=mito_folder"]


def check_mito_size(size: int) -> None:
    """Refuse an image size the suggested training command cannot take (its patches must fit in every image)."""
    from calib_seg.config import compose

    patch = int(compose(MITO_TRAIN).data.patch_size)
    if size < patch:
        raise ValueError(f"--size {size} is smaller than the {patch} px training patches of "
                         f"`python -m calib_seg.train {' '.join(MITO_TRAIN)}`; use --size {patch} or larger "
                         "(nothing was written)")


def _mito(args: argparse.Namespace) -> Path:
    from calib_seg.data.sources.mito_synth import write_mito_folder

    check_mito_size(args.size)  # before writing: a set the printed command cannot train on helps nobody
    out = Path(args.out)
    write_mito_folder(out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, size=args.size,
                      seed=args.seed or 0)
    print(f"wrote a synthetic EM set ({args.n_train}/{args.n_val}/{args.n_test} images) to {out}\nread it with: "
          f"python -m calib_seg.train {' '.join(MITO_TRAIN)} data.source.root={Path(out).resolve()}")
    return out


def _dots(args: argparse.Namespace) -> Path:
    from calib_seg.data.sources.point_folder import write_dots_folder

    out = Path(args.out)
    summary = write_dots_folder(out, n=args.n, size=args.size, seed=args.seed)
    counts = list(summary["counts"].values())
    print(f"wrote {args.n} synthetic cell images ({args.size}x{args.size} px RGB, {min(counts)}..{max(counts)} "
          f"cells each) with their dots images to {out} (flat images/ + dots/, see README.txt)\nrun the counting "
          f"protocol on it with: .venv/bin/python benchmarks/b8_counting_protocol.py --data {out.resolve()}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m calib_seg.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    b = sub.add_parser("beads", help="bead dilution series (images/*.tif + manifest.csv + centres.csv)")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--preset", default="beads_synth", help="a data preset of conf/data/ (beads_synth, beads_seed)")
    b.add_argument("--n-per-level", type=int, default=None)
    b.add_argument("--seed", type=int, default=None)
    b.set_defaults(func=_beads)
    m = sub.add_parser("mito", help="EM-like images with mitochondria masks ({train,val,test}/{images,masks})")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--n-train", type=int, default=8)
    m.add_argument("--n-val", type=int, default=2)
    m.add_argument("--n-test", type=int, default=2)
    m.add_argument("--size", type=int, default=512)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_mito)
    d = sub.add_parser("dots", help="synthetic fluorescence cells in the dot-annotated counting format "
                       "(flat images/ + dots/, one red pixel per cell)")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--n", type=int, default=200)
    d.add_argument("--size", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_dots)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
