# Sourced by the launch scripts: makes a Python environment with what the
# project needs, idempotently. Uses the active virtual environment if there is
# one, else creates .venv in the checkout. Re-installs only when a requirements
# file changed (a stamp file holds their hash).
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

_reqs=(requirements.txt "$@")
_stamp="$VIRTUAL_ENV/.dense_ssl_requirements.sha256"
_want="$(cat "${_reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "[setup] installing ${_reqs[*]} into $VIRTUAL_ENV (first run takes a few minutes)"
  python -m pip install --quiet --upgrade pip >/dev/null
  _args=()
  for r in "${_reqs[@]}"; do _args+=(-r "$r"); done
  python -m pip install --quiet "${_args[@]}" || {
    echo "[setup] ERROR: pip install of ${_reqs[*]} failed (see above)." >&2
    return 1
  }
  echo "$_want" > "$_stamp"
fi
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
unset _reqs _stamp _want _args
