#!/usr/bin/env bash
# Set up .venv at the repo root with the pinned dependencies (pyproject.toml + constraints.txt).
# Safe to run again: it only reinstalls when those files changed.
set -euo pipefail
cd "$(dirname "$0")"

# TorchServe's frontend is Java 11+.
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p' | head -n1 | awk '{print ($1 == 1 ? $2 : $1)}')
if [ -z "${java_major}" ] || [ "${java_major}" -lt 11 ]; then
  echo "error: TorchServe needs Java 11 or newer (found: ${java_major:-none})." >&2
  echo "fix:   Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless; Amazon Linux: sudo yum install -y java-17-amazon-corretto-headless; or set JAVA_HOME." >&2
  exit 1
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi

stamp=.venv/.installed-from
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  # torch==2.13.0 comes from pyproject.toml; elsewhere add --extra-index-url for a CPU-only build
  # (see README) or pip takes a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
  echo "$wanted" > "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python --version), java ${java_major})"
