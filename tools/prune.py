"""Prune the runs directory and bound the compile cache, as every night does at its end (tasks/report/retention.py).

    python -m tools.prune                  # runs/ and .cache/compile, with the default settings
    python -m tools.prune --dry-run        # say what would go; remove nothing
    python -m tools.prune --config configs/inf2-xlarge.yaml --full-runs 2

The run directories beyond the newest retention.full_runs (5) keep their records -- summary.json,
benchmark.json, flow.log, charts -- and lose model/, model_store/ and server logs; the compile cache keeps its
most recently used entries within retention.cache_entries (4) and retention.cache_gib (2). The settings are
the config's (tasks/common/config.py RetentionConfig): a config file's, or the flags'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.prune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="the run config whose runs_dir, cache and retention to apply")
    parser.add_argument("--runs-dir", type=Path, help="runs directory (default: the config's, runs/)")
    parser.add_argument("--full-runs", type=int, metavar="N", help="runs that keep everything (retention.full_runs)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tasks.common.config import ConfigError, load_config
    from tasks.report import retention

    overrides = {
        "runs_dir": str(args.runs_dir.resolve()) if args.runs_dir else None,
        "retention.full_runs": args.full_runs,
    }
    try:
        config = load_config(args.config.resolve() if args.config else None, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pruned = retention.apply(config, dry_run=args.dry_run)
    for run_dir in pruned.runs:
        print(f"{'would cut' if args.dry_run else 'cut'} to its records: {run_dir}")
    for entry in pruned.evicted:
        verb = "would evict" if args.dry_run else "evicted"
        print(f"{verb}: compile cache entry {entry.key} ({entry.bytes >> 20} MiB)")
    for line in retention.describe(pruned, config, args.dry_run):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
