"""One error base for every stage: what went wrong, what to do about it, and whether trying again can help.

A stage raises a subclass (TraceError, ServerError, RegisterError, ...) with the cause as the message and
the next step as `fix`; the text a user reads is "message\nfix: ...". `retryable` is what the flow's retry
conditions act on (a race such as a 5xx while TorchServe starts), so no caller parses messages.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A failure a user can act on."""

    def __init__(self, message: str, fix: str | None = None, retryable: bool = False):
        self.message, self.fix, self.retryable = message, fix, retryable
        super().__init__(f"{message}\nfix: {fix}" if fix else message)

    def __reduce__(self):
        # Prefect may pickle a task's exception; keep fix and retryable across it.
        return (_rebuild, (type(self), self.message, self.fix, self.retryable))


def _rebuild(cls: type[PipelineError], message: str, fix: str | None, retryable: bool) -> PipelineError:
    return cls(message, fix, retryable)
