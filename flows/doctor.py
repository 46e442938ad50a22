"""python -m flows.doctor: the first command on a new host, proving tonight's run will work (tasks/doctor).

    python -m flows.doctor [--config FILE] [--backend auto|neuron|cuda|cpu] [--instance-type T] [--out DIR]

Exits 0 when every step passed or did not apply, 1 when one failed, 2 for a configuration it refuses,
130 when interrupted (TorchServe is stopped first, as on a failure).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import NoReturn

# No network on many validation hosts: Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from tasks.common.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.doctor",
        description="Check this host the way tonight's run will use it -- install, Java, backend, NeuronCores, a "
        "compile, TorchServe with a killed worker, the accelerator's tool, stop -- each step pass / fail / "
        "skipped with its time and, on a failure, the fix.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the run config whose model and serving settings are checked (default: none, the defaults)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "neuron", "cuda", "cpu"],
        help="the backend to check (default: the config's serving.backend, auto by default)",
    )
    parser.add_argument(
        "--instance-type",
        metavar="TYPE",
        help="e.g. inf2.xlarge: counts NeuronCores when neuron-ls is missing (configs/neuron_cores.yaml)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where doctor.md and doctor.json go (default: <runs dir>/doctor-<UTC time>)",
    )
    return parser


def _terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the step stops and TorchServe is stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config and args.config.expanduser().resolve())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tasks.doctor import doctor

    signal.signal(signal.SIGTERM, _terminated)
    report = doctor(config, args.backend, args.instance_type, args.out)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
