"""API_ERRORS: what a call to the Prefect API raises when the API fails to answer or refuses.

Reporting goes on without the API where it can -- the trend shows tonight alone, the regression is skipped, the
artifact keys fall back to the ad-hoc ones -- and catches these, and only these: any other exception is a bug,
and fails the run and its tests instead of becoming a warning.
"""

from __future__ import annotations

import httpx
from prefect.exceptions import PrefectException

# Unreachable (connection refused, a timeout: httpx's errors, or the socket's below them), or refusing (Prefect's
# own: ObjectNotFound, PrefectHTTPStatusError's 4xx/5xx).
API_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, PrefectException, OSError)
