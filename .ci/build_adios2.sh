#!/usr/bin/env bash
# Build ADIOS2 (PyPI sdist) with MPI + SST + Python bindings and install it into a venv prefix.
#
# Usage: .ci/build_adios2.sh VENV
#
# The CMake install tree is cached under ${STAGELEARN_CACHE:-~/.cache/stagelearn}/adios2-<ver>-<pyver>
# so that a fresh clone on the same machine only copies it (seconds) instead of rebuilding (~6 min, -j2).
set -euo pipefail
VENV=$(cd "$1" && pwd)
ADIOS2_VERSION=${ADIOS2_VERSION:-2.12.1.1001}
PY="$VENV/bin/python"
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
CACHE=${STAGELEARN_CACHE:-$HOME/.cache/stagelearn}
MPICH_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version(\"mpich\"))")
PREFIX="$CACHE/adios2-$ADIOS2_VERSION-py$PYVER-mpich$MPICH_VERSION"
JOBS=${JOBS:-$(nproc)}

if [ ! -f "$PREFIX/.complete" ]; then
  echo "[adios2] building ADIOS2 $ADIOS2_VERSION with MPI into $PREFIX (takes ~6 min on 2 cores)"
  SRC="$CACHE/src"
  mkdir -p "$SRC"
  if ! ls "$SRC"/adios2-"$ADIOS2_VERSION".tar.gz >/dev/null 2>&1; then
    "$PY" -m pip download --no-deps --no-binary adios2 "adios2==$ADIOS2_VERSION" -d "$SRC"
  fi
  rm -rf "$SRC/adios2-$ADIOS2_VERSION" "$SRC/build-$ADIOS2_VERSION"
  tar -xzf "$SRC/adios2-$ADIOS2_VERSION.tar.gz" -C "$SRC"
  cmake -S "$SRC/adios2-$ADIOS2_VERSION" -B "$SRC/build-$ADIOS2_VERSION" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DCMAKE_INSTALL_LIBDIR=lib \
    -DCMAKE_INSTALL_RPATH="$PREFIX/lib" \
    -DADIOS2_USE_MPI=ON -DADIOS2_USE_SST=ON -DADIOS2_USE_Python=ON \
    -DADIOS2_USE_PIP=OFF -DADIOS2_USE_CURL=OFF -DADIOS2_USE_OpenSSL=OFF -DADIOS2_USE_Sodium=OFF \
    -DADIOS2_USE_Fortran=OFF -DADIOS2_BUILD_EXAMPLES=OFF -DBUILD_TESTING=OFF \
    -DPython_EXECUTABLE="$PY" \
    -DMPI_C_COMPILER="$VENV/bin/mpicc" -DMPI_CXX_COMPILER="$VENV/bin/mpicxx" \
    > "$SRC/cmake-configure.log"
  cmake --build "$SRC/build-$ADIOS2_VERSION" -j "$JOBS" > "$SRC/cmake-build.log"
  cmake --install "$SRC/build-$ADIOS2_VERSION" > "$SRC/cmake-install.log"
  rm -rf "$SRC/adios2-$ADIOS2_VERSION" "$SRC/build-$ADIOS2_VERSION"
  touch "$PREFIX/.complete"
fi
# Put the cached install tree on the venv's path (a .pth file, so no copy is needed).
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PKGDIR=$(dirname "$(find "$PREFIX" -path '*site-packages/adios2/__init__.py' | head -1)")
if [ -z "$PKGDIR" ] || [ "$PKGDIR" = "." ]; then
  echo "[adios2] ERROR: no adios2 Python package under $PREFIX; see $CACHE/src/cmake-configure.log" >&2
  exit 1
fi
echo "$(dirname "$PKGDIR")" > "$SITE/stagelearn-adios2-mpi.pth"
"$PY" - <<'PY'
from mpi4py import MPI  # load the venv's libmpi first (the cached build resolves it by soname)
import adios2, sys
if not adios2.is_built_with_mpi:
    sys.exit("[adios2] ERROR: the installed adios2 is NOT built with MPI")
print(f"[adios2] adios2 {adios2.__version__} built with MPI: OK ({adios2.__file__})")
PY
