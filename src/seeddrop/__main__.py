"""Command line: ``python -m seeddrop demo [...]`` and ``python -m seeddrop bench [...]``
(also installed as the ``seeddrop`` command)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from . import bench, demo

    parser = argparse.ArgumentParser(prog="seeddrop", description="Seeded dropout whose only state is a seed.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")
    demo_parser = sub.add_parser("demo", help="the newcomer demo: tutorial table, memory, MLP training (< 2 min on a CPU)",
                                 description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.main)
    bench_parser = sub.add_parser("bench", help="benchmark against torch, torch.compile, the Triton tutorial and copy",
                                  description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(run=bench.main)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
