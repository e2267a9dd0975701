"""Existing C++ codes for the test suite: ADIOS2's own Gray-Scott tutorial simulation, built once.

The simulation (``examples/simulations/gray-scott`` of the ADIOS2 sdist that ``make setup`` caches
in ``~/.cache/stagelearn/src``) is compiled with its own ``CMakeLists.txt`` against the cached
ADIOS2 C++ install (``lib/cmake/adios2``) with the mpich wheel's ``mpicxx``, and kept in
``~/.cache/stagelearn/cpp-codes/<the ADIOS2 install's name>/gray-scott/`` (``$STAGELEARN_CACHE``
replaces ``~/.cache/stagelearn``) together with the tutorial's ``adios2.xml`` and settings files.
Parallel test workers share one build through a file lock; a later call only checks the binary.

``python tests/cpp_codes.py`` builds it ahead of the tests; tests call :func:`gray_scott` and
turn :class:`Unavailable` into a skip.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LOCK_TIMEOUT_S = 600  # another worker's build (20-60 s on 2 cores) must end within this
BUILD_TIMEOUT_S = 600  # one cmake call
CMAKE_FALLBACK = "/usr/bin/cmake"  # where PATH has no cmake
TUTORIAL = "examples/simulations/gray-scott"
TARGET = "adios2_simulations_gray-scott"
KEPT = ("adios2.xml", "simulation/settings-files.json", "simulation/settings-staging.json", "ReadMe.md")


class Unavailable(RuntimeError):
    """What the build needs is missing here (the message says what, and how to get it)."""


class BuildFailed(RuntimeError):
    """The tutorial did not compile or link (the message holds the log's tail and its path)."""


def adios2_prefix():
    """The ADIOS2 install tree the venv's ``adios2`` package comes from, and its version.

    Returns
    -------
    prefix : Path
        ``<cache>/adios2-<version>-py<X.Y>-mpich<V>``, holding ``lib/cmake/adios2``.
    version : str
        ADIOS2's sdist version (e.g. ``2.12.1.1001``), from the install tree's name.

    Raises
    ------
    Unavailable
        No ADIOS2 C++ install built by ``make setup`` (e.g. ``STAGELEARN_ADIOS2=wheel``).
    """
    spec = importlib.util.find_spec("adios2")
    if spec is None or not spec.origin:
        raise Unavailable("adios2 is not installed; run `make setup`")
    origin = Path(spec.origin).resolve()  # <prefix>/lib/pythonX.Y/site-packages/adios2/__init__.py
    prefix = origin.parents[4] if len(origin.parents) > 4 else origin.parent
    match = re.match(r"adios2-(\d[\w.]*?)-py\d", prefix.name)
    if not (prefix / "lib" / "cmake" / "adios2").is_dir() or match is None:
        raise Unavailable(f"adios2 at {origin} is not the C++ install of `make setup` (no lib/cmake/adios2 under "
                          f"{prefix}); the C++ Gray-Scott needs STAGELEARN_ADIOS2=mpi (`make setup`)")
    if not (prefix / ".complete").is_file():
        raise Unavailable(f"the ADIOS2 install {prefix} is incomplete (no .complete); rerun `make setup`")
    return prefix, match.group(1)


def toolchain():
    """``(mpicc, mpicxx, cmake)`` paths: the venv's mpich wrappers and CMake.

    Raises
    ------
    Unavailable
        Naming the missing tool and how to install it.
    """
    bindir = Path(sys.executable).parent
    found = {name: bindir / name for name in ("mpicc", "mpicxx") if (bindir / name).is_file()}
    missing = [f"{name} (the mpich wheel's, in {bindir}: `pip install mpich`)" for name in ("mpicc", "mpicxx")
               if name not in found]
    cmake = shutil.which("cmake") or (CMAKE_FALLBACK if os.path.isfile(CMAKE_FALLBACK) else None)
    if cmake is None:
        missing.append("cmake (>= 3.12: `apt-get install cmake` or `pip install cmake`)")
    if not missing and shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler for mpicxx (`apt-get install g++`)")
    if missing:
        raise Unavailable("cannot build ADIOS2's C++ Gray-Scott: missing " + "; ".join(missing))
    return str(found["mpicc"]), str(found["mpicxx"]), cmake


def _unresolved_libraries(binary):
    """Shared libraries ``binary`` needs that the loader cannot find (empty when it would start)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []  # no ldd: trust the build
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


class _Lock:
    """An exclusive ``flock`` on ``path``, waited for at most ``timeout_s`` seconds."""

    def __init__(self, path, timeout_s):
        self.path, self.timeout_s, self.fd = path, timeout_s, None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"{self.path} still locked after {self.timeout_s} s: another build of the "
                                       "C++ Gray-Scott is running or hung (remove the lock file if no build runs)")
                time.sleep(1.0)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _run(args, log, cwd=None, env=None):
    """One build command under ``nice -n 10``, output appended to ``log``; BuildFailed on error."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, args))}\n")
        f.flush()
        try:
            nice = ["nice", "-n", "10"] if shutil.which("nice") else []  # the build yields to the tests
            proc = subprocess.run([*nice, *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                                  cwd=cwd, env=env, timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BuildFailed(f"{args[0]} ran past {BUILD_TIMEOUT_S} s; see {log}") from None
    if proc.returncode != 0:
        tail = "".join(Path(log).read_text().splitlines(keepends=True)[-30:])
        raise BuildFailed(f"{' '.join(map(str, args[:3]))} ... failed ({proc.returncode}); full log {log}:\n{tail}")


def _build(prefix, version, dest):
    """Extract the tutorial from the sdist, configure with its CMakeLists, build the simulation.

    The log of the last build is kept beside the folder (``gray-scott-build.log``) and in it.
    """
    mpicc, mpicxx, cmake = toolchain()
    sdist = prefix.parent / "src" / f"adios2-{version}.tar.gz"
    if not sdist.is_file():
        raise Unavailable(f"the ADIOS2 sdist {sdist} is not cached (`make setup` keeps it; or "
                          f"`pip download --no-deps --no-binary adios2 adios2=={version} -d {sdist.parent}`)")
    log = dest.parent / "gray-scott-build.log"
    log.write_text(f"ADIOS2 {version}: {TUTORIAL} from {sdist}\n")
    work = Path(tempfile.mkdtemp(prefix="gray-scott-", dir=dest.parent))
    try:
        root = f"adios2-{version}/{TUTORIAL}/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(root) and (m.isfile() or m.isdir())]
            if not members:
                raise BuildFailed(f"{sdist} has no {TUTORIAL}")
            for m in members:
                m.name = m.name[len(root):] or "."
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(work / "src", members=members, **safe)
        env = dict(os.environ, CC=mpicc, CXX=mpicxx)
        _run([cmake, "-S", work / "src", "-B", work / "build", "-G", "Unix Makefiles", "-DCMAKE_BUILD_TYPE=Release",
              f"-DCMAKE_C_COMPILER={mpicc}", f"-DCMAKE_CXX_COMPILER={mpicxx}",
              f"-DMPI_C_COMPILER={mpicc}", f"-DMPI_CXX_COMPILER={mpicxx}",
              f"-DADIOS2_DIR={prefix / 'lib' / 'cmake' / 'adios2'}"], log, env=env)
        _run([cmake, "--build", work / "build", "--target", TARGET, "-j", "2"], log, env=env)  # make -j2
        out = work / "out"
        out.mkdir()
        shutil.copy2(work / "build" / TARGET, out / TARGET)
        for rel in KEPT:
            shutil.copy2(work / "src" / rel, out / Path(rel).name)
        shutil.copy2(log, out / "build.log")
        (out / ".complete").write_text(f"ADIOS2 {version} from {sdist}\ninstall {prefix}\nmpicxx {mpicxx}\n")
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)  # whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gray_scott():
    """The built tutorial: its folder, built now unless the cache holds a binary that starts.

    Returns
    -------
    folder : Path
        Holds ``adios2_simulations_gray-scott``, the tutorial's ``adios2.xml``,
        ``settings-files.json``, ``settings-staging.json`` and ``build.log``.

    Raises
    ------
    Unavailable
        ADIOS2's C++ install, its sdist, mpicxx/mpicc or cmake is missing.
    BuildFailed
        The compiler or linker failed (message: the log's tail).
    """
    prefix, version = adios2_prefix()
    dest = prefix.parent / "cpp-codes" / prefix.name / "gray-scott"

    def ready():  # built after the ADIOS2 install it links (a rebuilt install means a rebuild here)
        stamp = dest / ".complete"
        return (stamp.is_file() and stamp.stat().st_mtime >= (prefix / ".complete").stat().st_mtime
                and not _unresolved_libraries(dest / TARGET))

    if ready():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _Lock(dest.parent / "gray-scott.lock", LOCK_TIMEOUT_S):
        if not ready():  # another worker may have built it while this one waited
            _build(prefix, version, dest)
        missing = _unresolved_libraries(dest / TARGET)
        if missing:
            raise BuildFailed(f"{dest / TARGET} was built but the loader cannot find {missing}")
    return dest


if __name__ == "__main__":
    t0 = time.time()
    try:
        folder = gray_scott()
    except (Unavailable, BuildFailed) as exc:
        sys.exit(f"cpp_codes: {exc}")
    print(f"ADIOS2's C++ Gray-Scott: {folder / TARGET} ({time.time() - t0:.0f} s)")
