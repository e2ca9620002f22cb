"""``python -m bench`` (``make bench``): the comparison, the scaling figures (composite
against tracks, larger calls, recordings at once), a long tracks-only recording and its
composition, then the memory soak."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bench import compare_recorders, compose_speed, memory_soak, scaling
from bot.logs import configure_logging


async def _run_all(args: argparse.Namespace) -> None:
    comparison = await compare_recorders.run_compare(args.seconds, args.runs)
    print(comparison.report(), end="\n\n", flush=True)
    scaled = await scaling.run_report(args.scaling_seconds, args.sizes, args.at_once, args.store)
    print(scaled, flush=True)
    print(await compose_speed.run_report(args.compose_seconds, args.threads), flush=True)
    print((await memory_soak.run_soak(args.minutes, args.interval)).report(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    compare_recorders.add_arguments(parser)
    scaling.add_arguments(parser)
    compose_speed.add_arguments(parser)
    memory_soak.add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("info")
    asyncio.run(_run_all(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
