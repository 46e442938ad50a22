#!/usr/bin/env bash
# Set up .venv at the repo root with the pinned dependencies (pyproject.toml + constraints.txt).
# Safe to run again: it only reinstalls when those files changed.
#   ./setup.sh                  .venv, constraints.txt (torch 2.13.0, transformers 5.x)
#   ./setup.sh --neuron         .venv, constraints-neuron.txt (Neuron 2.31.0: torch-neuronx, neuronx-cc, torch 2.9.0,
#                               transformers 4.57.6) with Neuron's package index; only on an inf2 / trn1 host
#   ./setup.sh --transformers4  .venv-tf4, constraints-transformers4.txt: CI's second environment (transformers
#                               4.57.6, torch 2.13.0), to prove the code on transformers' 4.x API here; made as a
#                               hard-link copy of .venv (when set up) with the differing pins swapped by pip
#   ./setup.sh --tests          first the system packages the tests need, when missing (Debian/Ubuntu, as root:
#                               apt-get): postgresql (deployments/local.py up --database postgres) and chromium
#                               (the UI screenshots); then the .venv as plain ./setup.sh
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
constraints=constraints.txt
extra_index=()
tests=false
case "${1:-}" in
  "") ;;
  --neuron)
    constraints=constraints-neuron.txt
    extra_index=(--extra-index-url https://pip.repos.neuron.amazonaws.com) ;;
  --transformers4)
    venv=.venv-tf4
    constraints=constraints-transformers4.txt ;;
  --tests)
    tests=true ;;
  *)
    echo "usage: ./setup.sh [--neuron | --transformers4 | --tests]" >&2
    exit 2 ;;
esac

if [ "$tests" = true ]; then
  # What the tests run for real: Debian's PostgreSQL server binaries and a headless browser.
  missing=()
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null || missing+=(postgresql)
  command -v chromium > /dev/null || missing+=(chromium fonts-liberation)  # a font, or pages render without text
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
      echo "error: the tests need these system packages, missing here: ${missing[*]}" >&2
      echo "fix:   as root on Debian/Ubuntu: apt-get update && apt-get install -y ${missing[*]}  (or run ./setup.sh --tests as root)" >&2
      exit 1
    fi
    echo "setup: installing ${missing[*]} (apt-get)"
    started=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    echo "setup: installed ${missing[*]} in $((SECONDS - started)) s"
  fi
fi

# TorchServe's frontend is Java 11+.
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p' | head -n1 | awk '{print ($1 == 1 ? $2 : $1)}')
if [ -z "${java_major}" ] || [ "${java_major}" -lt 11 ]; then
  echo "error: TorchServe needs Java 11 or newer (found: ${java_major:-none})." >&2
  echo "fix:   Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless; Amazon Linux: sudo yum install -y java-17-amazon-corretto-headless; or set JAVA_HOME." >&2
  exit 1
fi

python=${PYTHON:-python3}
if [ "$venv" = .venv-tf4 ] && [ ! -e "$venv" ] && [ -f .venv/.installed-from ]; then
  # CI's second environment starts as a copy of .venv made of hard links (seconds, no disk: torch alone
  # would take minutes to unpack again); pip below then swaps only the packages whose pins differ. pip
  # replaces a file by removing and writing it, never in place, so .venv itself is never changed.
  cp -al .venv "$venv"
  rm -f "$venv/.installed-from"
  # Scripts and activate name their own environment: point the copy's at itself (sed writes new files).
  grep -lI "$PWD/.venv\b" "$venv"/bin/* "$venv/pyvenv.cfg" 2>/dev/null | while read -r file; do
    sed -i "s#$PWD/.venv\b#$PWD/$venv#g" "$file"
  done
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi

stamp=$venv/.installed-from
wanted=$( (echo "$constraints"; cat pyproject.toml "$constraints") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  # torch comes pinned from the constraints file; elsewhere add --extra-index-url for a CPU-only build
  # (see README) or pip takes a multi-GB CUDA build.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check ${extra_index[@]+"${extra_index[@]}"} \
    -c "$constraints" -e ".[test]"
  echo "$wanted" > "$stamp"
fi
echo "setup: $venv ready from $constraints ($("$venv/bin/python" --version), java ${java_major})"
