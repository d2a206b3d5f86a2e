# Sourced after launch/setup_env.sh by the commands that compile for TPUs
# without one (launch/compile_check.sh, launch/test.sh): installs libtpu
# (requirements-tpu.txt) into $VIRTUAL_ENV/tpu_compiler, idempotently, and
# puts it on PYTHONPATH. Kept out of the venv's site-packages so that the
# demo and the trainer on a CPU or GPU host never load it.
#
#   source launch/setup_env.sh && source launch/tpu_compiler.sh

_tpu_dir="$VIRTUAL_ENV/tpu_compiler"
_tpu_stamp="$_tpu_dir/.requirements.sha256"
_tpu_want="$(sha256sum "$_repo/requirements-tpu.txt" | cut -d' ' -f1)"
if [ "$(cat "$_tpu_stamp" 2>/dev/null)" != "$_tpu_want" ]; then
  echo "[setup] installing requirements-tpu.txt (libtpu, the TPU compiler) into $_tpu_dir"
  rm -rf "$_tpu_dir"
  python -m pip install --quiet --no-deps --target "$_tpu_dir" -r "$_repo/requirements-tpu.txt" || {
    echo "[setup] ERROR: pip install of requirements-tpu.txt failed (see above)." >&2
    return 1
  }
  echo "$_tpu_want" > "$_tpu_stamp"
fi
export PYTHONPATH="$PYTHONPATH:$_tpu_dir"
unset _tpu_dir _tpu_stamp _tpu_want
