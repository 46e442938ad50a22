import os
import tempfile

# No network on validation hosts or CI: Prefect's server must not phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A Prefect home of the test session's own (inherited by the pipelines the tests start as
# subprocesses): the suite never reads, writes or migrates the user's ~/.prefect database.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-tests-"))
# A compile cache of the session's own: no test reuses (or fills) the checkout's .cache/compile.
os.environ.setdefault("BERT_COMPILE_CACHE", tempfile.mkdtemp(prefix="compile-cache-tests-"))
# The pipelines tests start as subprocesses run on Prefect's temporary server; on a busy 2-core host it
# can take longer than Prefect's default 20 s to come up.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
