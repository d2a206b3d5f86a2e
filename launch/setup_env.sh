# Sourced by the launch scripts: makes a Python environment with what the
# project needs, idempotently. Uses the active virtual environment if there is
# one, else creates .venv in the checkout. Installs only when a requested
# requirements file is new or changed (a stamp per file holds its hash).
#
#   source launch/setup_env.sh [extra requirements files...]

_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$_repo" || return 1

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating virtual environment in $_repo/.venv"
    python3 -m venv .venv || {
      echo "[setup] ERROR: 'python3 -m venv' failed. On Debian/Ubuntu install it with: apt-get install python3-venv" >&2
      return 1
    }
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

# Only requirements files: `source setup_env.sh` with no arguments sees the
# calling script's own (e.g. tpu_pod.sh's --config.* overrides).
_reqs=(requirements.txt)
for r in "$@"; do
  case "$r" in requirements*.txt) _reqs+=("$r") ;; esac
done
# One stamp per requirements file (its hash when installed): the demo after
# the tests (or the reverse) finds its files installed and installs nothing.
_stamps="$VIRTUAL_ENV/.dense_ssl_requirements"
_missing=()
for r in "${_reqs[@]}"; do
  if [ "$(cat "$_stamps/$r.sha256" 2>/dev/null)" != "$(sha256sum "$r" | cut -d' ' -f1)" ]; then
    _missing+=("$r")
  fi
done
if [ "${#_missing[@]}" -gt 0 ]; then
  echo "[setup] installing ${_missing[*]} into $VIRTUAL_ENV (first run takes a few minutes)"
  python -m pip install --quiet --upgrade pip >/dev/null
  # All requested files together, so pip resolves one consistent set.
  _args=()
  for r in "${_reqs[@]}"; do _args+=(-r "$r"); done
  python -m pip install --quiet "${_args[@]}" || {
    echo "[setup] ERROR: pip install of ${_reqs[*]} failed (see above)." >&2
    return 1
  }
  mkdir -p "$_stamps"
  for r in "${_reqs[@]}"; do sha256sum "$r" | cut -d' ' -f1 > "$_stamps/$r.sha256"; done
fi
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
unset _reqs _stamps _missing _args
