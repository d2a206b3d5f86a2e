# Sourced after launch/setup_env.sh by the commands that compile for
# accelerators this host does not have (launch/compile_check.sh,
# launch/test.sh): installs the TPU compiler (libtpu, requirements-tpu.txt)
# and the CUDA plugin's compiler (requirements-gpu-compile.txt, without the
# CUDA libraries) each into its own folder of the venv, idempotently, and
# names the folders in DENSE_SSL_TPU_COMPILER / DENSE_SSL_GPU_COMPILER.
#
# Neither goes into the venv's site-packages nor on PYTHONPATH: where libtpu
# is importable, every JAX program on a host without a TPU looks for one
# and logs a page of errors; where the CUDA plugin is, every `import jax`
# logs "Could not find cuda drivers". dense_ssl/compile_check.py puts the
# folder of the platform it compiles for on its own sys.path.
#
#   source launch/setup_env.sh && source launch/compilers.sh

_compiler() {  # _compiler <requirements file> <folder under the venv> <what>
  local dir="$VIRTUAL_ENV/$2" want
  want="$(sha256sum "$_repo/$1" | cut -d' ' -f1)"
  if [ "$(cat "$dir/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing $1 ($3) into $dir"
    rm -rf "$dir"
    python -m pip install --quiet --no-deps --target "$dir" -r "$_repo/$1" || {
      echo "[setup] ERROR: pip install of $1 failed (see above)." >&2
      return 1
    }
    echo "$want" > "$dir/.requirements.sha256"
  fi
}
_compiler requirements-tpu.txt tpu_compiler "libtpu, the TPU compiler" || return 1
_compiler requirements-gpu-compile.txt gpu_compiler "the CUDA plugin's compiler, ~1 GB" || return 1
export DENSE_SSL_TPU_COMPILER="$VIRTUAL_ENV/tpu_compiler"
export DENSE_SSL_GPU_COMPILER="$VIRTUAL_ENV/gpu_compiler"
unset -f _compiler
