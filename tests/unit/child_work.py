"""A child process for tests/unit/test_child.py (`python -m tests.unit.child_work`): does what its request says.
Imports nothing heavy, so each child starts in a fraction of a second."""

import os
import sys

from tasks.common import child
from tasks.common.errors import PipelineError


class CoreRefused(PipelineError):
    """A PipelineError of its own kind, which a caller may name as known."""


def work(request: dict) -> dict:
    print("a line for the stage's log", file=sys.stderr, flush=True)
    print("a compiler's line on stdout", flush=True)  # neuronx-cc says why a compile failed there
    what = request.get("do")
    if what == "refuse":
        raise PipelineError("no NeuronCore is free", fix="free one", retryable=True)
    if what == "refuse-known":
        raise CoreRefused("NeuronCore 1 is held by pid 42", fix="stop pid 42")
    if what == "bug":
        raise KeyError("model_files")
    if what == "die":
        os._exit(3)
    return {"echo": request["echo"], "env": os.environ.get("CHILD_TEST_VALUE"), "cwd": os.getcwd(), "path": sys.path}


if __name__ == "__main__":
    child.main(work)
