import os

# No network on validation hosts or CI: Prefect's server must not phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
