"""Command line: ``python -m ltc demo`` (the README's main job)."""
from __future__ import annotations

import argparse

from ._version import __version__
from .demo import oracle as demo_oracle
from .demo import zoo as demo_zoo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ltc", description="ltc: fast, exact diffusion sampling")
    parser.add_argument("--version", action="version", version=f"ltc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo on the models shipped in the package (CPU, about a minute)")
    demo.add_argument("--oracle", action="store_true", help="only the exact-oracle sampler table")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--out", default="demo_out", help="folder for the PNG sample grid and trade-off plot")
    demo.add_argument("--recalibrate", action="store_true",
                      help="re-run ltc.calibrate for the demo's LTC plans and overwrite the shipped calibration files")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.oracle:
            demo_oracle.main(progress=not args.no_progress)
        else:
            demo_zoo.main(out_dir=args.out, progress=not args.no_progress, recalibrate=args.recalibrate)
    return 0
