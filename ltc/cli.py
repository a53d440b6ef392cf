"""Command line: ``python -m ltc`` (or ``ltc``) -- the demo; ``--version``; ``--help`` lists the commands."""
from __future__ import annotations

import argparse

from ._version import __version__
from .demo import oracle as demo_oracle
from .demo import zoo as demo_zoo

# every command, with the one line --help shows for it
COMMANDS = {
    "demo": "LTC-Accel and T-Stitch vs the plain sampler on the shipped digit models (~1 min)",
}
OTHER_ENTRY_POINTS = {
    "python -m ltc.distributed DIR": "verify an ltc.distributed.generate output directory",
    "python -m ltc.zoo.train ...": "retrain the zoo's models and data (see ltc/zoo/train.py)",
}


def _epilog() -> str:
    width = max(map(len, [*COMMANDS, *OTHER_ENTRY_POINTS]))
    lines = ["commands:"] + [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "other entry points:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in OTHER_ENTRY_POINTS.items()]
    return "\n".join(lines + ["", "`ltc COMMAND --help` shows a command's options."])


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m ltc``."""
    top = argparse.ArgumentParser(prog="ltc", usage="ltc [-h] [--version] COMMAND ...", description="ltc: fast, exact sampling for diffusion and flow models",
                                  epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"ltc {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS)
    demo = sub.add_parser("demo", help=COMMANDS["demo"], description=COMMANDS["demo"])
    demo.add_argument("--full", action="store_true",
                      help=f"a longer run: {demo_zoo.FULL.batch} samples and {demo_zoo.FULL.repeats} timed repeats "
                           f"(default {demo_zoo.QUICK.batch} and {demo_zoo.QUICK.repeats})")
    demo.add_argument("--oracle", action="store_true", help="only the exact-oracle sampler table")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--threads", type=int, default=1,
                      help="CPU threads for torch (default 1: steadier timings, and faster on a busy machine)")
    demo.add_argument("--out", default="demo_out", help="folder for the sample grid and trade-off plot (PNG)")
    demo.add_argument("--recalibrate", action="store_true",
                      help="re-run ltc.calibrate for the demo's LTC plans and save the weights in "
                           "$LTC_HOME/calibrations (default ~/.cache/ltc/calibrations), used from then on")
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        if args.oracle:
            demo_oracle.main(progress=not args.no_progress)
        else:
            demo_zoo.main(out_dir=args.out, progress=not args.no_progress, recalibrate=args.recalibrate,
                          full=args.full, threads=args.threads)
    return 0
