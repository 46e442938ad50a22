"""Tests that look at the Prefect UI need a browser; without one they skip and say how to get it."""

import pytest

from tools.screenshots import find_chromium

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on this host, so the Prefect UI is not looked at: `apt-get install -y chromium` "
    "(Debian's package)",
)
