"""The compile cache (tasks/prepare/cache.py), by hand.

    python -m tools.cache list     # entries: key, size, build seconds, when
    python -m tools.cache clear    # delete every entry; the next run traces again

The cache is $BERT_COMPILE_CACHE, else .cache/compile in the checkout.
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.common.config import default_cache_dir
from tasks.prepare import cache


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.cache", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["list", "clear"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    where = default_cache_dir()
    if args.command == "clear":
        print(f"compile cache {where}: {cache.clear(where)} entries deleted")
        return 0
    for entry in sorted(where.iterdir()) if where.is_dir() else []:
        try:
            manifest = json.loads((entry / cache.MANIFEST).read_text())
        except (OSError, ValueError):
            print(f"{entry.name}  (no manifest: partial or corrupt, rebuilt when next used)")
            continue
        size = sum((entry / name).stat().st_size for name in manifest["files"] if (entry / name).is_file())
        print(
            f"{entry.name}  {size / 2**20:.0f} MiB  built in {manifest['build_seconds']:.1f} s  {manifest['created']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
