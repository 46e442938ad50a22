"""deployments/*.py are scripts run by path, not a package: tests load them as modules."""

import importlib.util
from types import ModuleType

from tasks.common.config import REPO_ROOT


def deployments_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deployments_{name}", REPO_ROOT / "deployments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
