# Sourced by the entry scripts: creates .venv on first use and installs the project into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$VENV/.phalanx-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "bootstrap: installing phalanx and its dependencies into $VENV" >&2
  # pip's output goes to a log and is shown only on failure: some machines carry pip settings
  # that print a screenful of harmless warnings about absent local indexes.
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]" \
      >"$VENV/pip-install.log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$VENV/pip-install.log" >&2
    echo "bootstrap: installing dependencies failed (full log: $VENV/pip-install.log)" >&2
    exit 1
  fi
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
