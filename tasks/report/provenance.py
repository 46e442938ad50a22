"""Provenance: what code, on what machine, with what settings produced a run -- enough to tell why two
nights differ. In summary.json (`provenance`) and the run-config artifact.

    git            the checkout's commit and whether it had uncommitted changes (dirty)
    instance_type  serving.instance_type when the config names one, else the DMI product name on an EC2
                   Nitro host (/sys/devices/virtual/dmi/id: no network, no metadata service), else unknown
    compiler_args  what the graphs were compiled with (the traced model's facts, else the config's)
    config_hash    a hash of the whole resolved configuration: two runs with the same hash ran the same config

Package versions and the host are the summary's `versions` and `host`. Nothing here fails a run: a
missing git or an unreadable file says "unknown".
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from tasks.common.config import REPO_ROOT

UNKNOWN = "unknown"
DMI = Path("/sys/devices/virtual/dmi/id")
EC2_VENDOR = "Amazon EC2"  # sys_vendor on Nitro instances, whose product_name is the instance type


def git_state(repo: Path = REPO_ROOT) -> dict:
    """{commit, dirty, changed, untracked}; dirty: tracked files differ from the commit."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.SubprocessError) as error:
        return {"commit": UNKNOWN, "dirty": None, "error": f"{type(error).__name__}: {str(error)[:200]}"}
    untracked = sum(line.startswith("??") for line in status)
    changed = len(status) - untracked
    return {"commit": commit, "dirty": changed > 0, "changed": changed, "untracked": untracked}


def instance_type(configured: str | None, dmi: Path = DMI) -> dict:
    """{instance_type, source}: the config's, else EC2's DMI product name, else unknown."""
    if configured:
        return {"instance_type": configured, "source": "config"}
    try:
        vendor = (dmi / "sys_vendor").read_text().strip()
        product = (dmi / "product_name").read_text().strip()
    except OSError:
        return {"instance_type": UNKNOWN, "source": "none"}
    if vendor == EC2_VENDOR and product:
        return {"instance_type": product, "source": f"{dmi / 'product_name'}"}
    return {"instance_type": UNKNOWN, "source": f"not EC2 ({vendor or 'no vendor'}: {product or 'no product'})"}


def config_hash(config: dict) -> str:
    """sha256 of the resolved configuration (as summary.json holds it), first 16 hex digits."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(config: dict, model: dict | None, repo: Path = REPO_ROOT, dmi: Path = DMI) -> dict:
    """The summary's `provenance`; `config` is the run config's JSON dump, `model` the summary's model facts."""
    compiler_args = (model or {}).get("compiler_args")
    if compiler_args is None:
        compiler_args = (config.get("model") or {}).get("compiler_args")
    return {
        "git": git_state(repo),
        **instance_type((config.get("serving") or {}).get("instance_type"), dmi),
        "compiler_args": compiler_args,
        "config_hash": config_hash(config),
    }
