"""Stop a TorchServe left up by `python -m flows.validate --keep-serving`.

python -m flows.stop [RUN_DIR]      (default: the latest run under the default runs_dir, runs/latest)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasks.common.config import RunConfig

LATEST = RunConfig.model_fields["runs_dir"].default / "latest"


def command(run_dir: Path) -> str:
    """What stops the server a run kept up (tasks/serve/server.py stop_command, the one wording)."""
    from tasks.serve.server import stop_command

    return stop_command(run_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.stop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", nargs="?", type=Path, default=LATEST)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # After parsing: --help answers without loading the server module and what it imports.
    from tasks.serve.server import ServerError, load_record, stop

    server = load_record(args.run_dir / "server")
    if server is None:
        print(f"no TorchServe recorded in {args.run_dir}; nothing to stop")
        return 0
    try:
        result = stop(server)
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"stopped TorchServe of {args.run_dir.resolve()} ({result.stopped} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
