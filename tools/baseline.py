"""Accept a change as the regression's new baseline: nights before it are no longer compared with.

    PREFECT_API_URL=http://prefect.internal:4200/api python -m tools.baseline accept nightly-cpu-embedded
    python -m tools.baseline accept nightly-inf2-xlarge --since 2026-12-06T02:00:00Z
    python -m tools.baseline show nightly-cpu-embedded
    python -m tools.baseline clear nightly-cpu-embedded      # compare with every comparable night again

The regression compares tonight with the median of the last comparable completed nights (docs/benchmark.md,
"Regression"). A real change -- a library that is slower for good, a cheaper instance -- regresses every night
until enough new nights outvote the old ones, and with `regression_action: fail` never: a regressed night fails,
and a failed night is no baseline. `accept` writes the time (default: now) into the Prefect Variable
bert-validation-baseline-<deployment> on the server PREFECT_API_URL names; from the next night on, only nights
that started at or after it are compared (the first says "no history" and passes; the median then builds up from
the nights since). The deployment is its short name (nightly-cpu-embedded), or adhoc-<backend> for the command
line's runs (tasks/common/keys.py); the Variable is in the UI under Variables too.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.baseline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["accept", "show", "clear"])
    parser.add_argument("deployment", help="e.g. nightly-cpu-embedded, or adhoc-cpu for command-line runs")
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="accept: compare only with nights started at or after this ISO 8601 time (UTC unless it says; "
        "default: now)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from prefect.settings import PREFECT_API_URL
    from prefect.variables import Variable

    from tasks.common.keys import slug
    from tasks.common.prefect_api import API_ERRORS
    from tasks.measure.history import BASELINE_VARIABLE, when

    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set: the baseline lives on the nights' server", file=sys.stderr)
        print("fix:   export PREFECT_API_URL=http://<server>:4200/api (local.py up's: 127.0.0.1:4200)", file=sys.stderr)
        return 2
    name = BASELINE_VARIABLE + slug(args.deployment)
    said = f"{args.deployment}: the regression compares"
    try:
        since = when(args.since) if args.since else datetime.now(UTC)
    except ValueError:
        print(f"error: --since {args.since!r} is not an ISO 8601 time, e.g. 2026-12-06T02:00:00Z", file=sys.stderr)
        return 2
    try:
        if args.command == "accept":
            Variable.set(name, since.isoformat(), overwrite=True)
            print(f"{said} only with nights started at or after {since.isoformat()}")
        elif args.command == "clear":
            Variable.unset(name)
            print(f"{said} with every comparable night")
        else:
            value = Variable.get(name, default=None)
            print(f"{args.deployment}: baseline since {value}" if value else f"{args.deployment}: no accepted baseline")
    except API_ERRORS as error:
        print(f"error: the Prefect API at {PREFECT_API_URL.value()} did not answer: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
