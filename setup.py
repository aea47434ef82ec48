"""Build script. Package metadata lives in pyproject.toml; this file only adds the optional
compiled extension bilinear_kernels._C (csrc/), a pybind11 module over cuSOLVER.

BILINEAR_KERNELS_BUILD_EXTENSION
  unset / "auto"  build it where the CUDA toolkit (found through CUDA_HOME, CUDA_PATH or nvcc on
                  PATH) and the cuSOLVER headers (the toolkit's, or the nvidia-cusolver wheel's
                  nvidia/cu13/include) are found; otherwise, or if it fails to compile, install
                  without it and say why
  "0"             never build it
  "1"             build it or fail loudly

The sources hold no device code (they call cuSOLVER and the CUDA runtime from the host), so they
are compiled by the host C++ compiler against the toolkit's headers: no GPU architecture list to
choose and a build of a few seconds. The CUDA runtime is linked statically (nothing to find at run
time); libcusolver is found at run time through an rpath to the wheel's lib folder, relative to the
installed package and absolute to the build machine's, and bilinear_kernels/extension.py preloads
it from any nvidia wheel on sys.path when neither applies.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ENV_SWITCH = "BILINEAR_KERNELS_BUILD_EXTENSION"
ROOT = Path(__file__).resolve().parent
# where a wheel keeps cuSOLVER, relative to site-packages: CUDA 13 wheels, then CUDA 12 wheels
WHEEL_LAYOUTS = ("nvidia/cu13", "nvidia/cusolver")


class ExtensionUnavailable(Exception):
    """The toolchain needed for the extension is missing (the message says what)."""


def build_mode() -> str:
    value = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "false", "no", "off"):
        return "skip"
    if value in ("1", "true", "yes", "on"):
        return "force"
    raise SystemExit(f"{ENV_SWITCH} must be 0, 1 or auto, got {value!r}")


def _has_runtime_headers(home: Path) -> bool:
    return any((d / "cuda_runtime_api.h").is_file() for d in _include_dirs(home))


def _include_dirs(home: Path) -> list[Path]:
    return [d for d in (home / "include", home / "targets" / "x86_64-linux" / "include") if d.is_dir()]


def _library_dirs(home: Path) -> list[Path]:
    dirs = (home / "lib64", home / "lib", home / "targets" / "x86_64-linux" / "lib")
    return [d for d in dirs if d.is_dir()]


def find_cuda_home() -> Path:
    """The CUDA toolkit's root: CUDA_HOME / CUDA_PATH, else where nvcc says it lives."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            home = Path(os.environ[var])
            if _has_runtime_headers(home):
                return home
            raise ExtensionUnavailable(f"{var}={home} has no include/cuda_runtime_api.h")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise ExtensionUnavailable("nvcc is not on PATH and neither CUDA_HOME nor CUDA_PATH is set")
    candidates = []
    try:
        # nvcc may be a wrapper script; its dry run prints the real toolkit root as TOP=...
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        candidates += [Path(m) for m in re.findall(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)]
    except (OSError, subprocess.SubprocessError):
        pass
    candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    for home in candidates:
        if _has_runtime_headers(home):
            return home.resolve()
    raise ExtensionUnavailable(f"found nvcc at {nvcc} but no CUDA runtime headers beside it")


def _site_roots() -> list[Path]:
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    seen, out = set(), []
    for r in roots:
        p = Path(r or ".").resolve()
        if p not in seen and p.is_dir():
            seen.add(p)
            out.append(p)
    return out


def find_cusolver(cuda_home: Path) -> tuple[Path, Path, str, str | None]:
    """(include dir, lib dir, linker flag, rpath relative to site-packages or None) for cuSOLVER:
    the toolkit's own first, then an nvidia-cusolver wheel."""
    places = [(inc, lib, None) for inc in _include_dirs(cuda_home) for lib in _library_dirs(cuda_home)]
    for root in _site_roots():
        for layout in WHEEL_LAYOUTS:
            places.append((root / layout / "include", root / layout / "lib", f"{layout}/lib"))
    for inc, lib, relative in places:
        if not (inc / "cusolverDn.h").is_file():
            continue
        if (lib / "libcusolver.so").is_file():
            return inc, lib, "-lcusolver", relative
        versioned = sorted(glob.glob(str(lib / "libcusolver.so.[0-9]*")))
        if versioned:
            # wheels ship only the versioned file: link it by name
            return inc, lib, f"-l:{Path(versioned[0]).name}", relative
    raise ExtensionUnavailable(
        "no cuSOLVER headers and library found (install the nvidia-cusolver wheel, "
        f"or a CUDA toolkit with cuSOLVER); looked in {cuda_home} and nvidia/cu13 under site-packages")


def find_cudart_static(cuda_home: Path) -> Path:
    for lib in _library_dirs(cuda_home):
        if (lib / "libcudart_static.a").is_file():
            return lib / "libcudart_static.a"
    raise ExtensionUnavailable(f"no libcudart_static.a under {cuda_home}")


def extension_modules(mode: str) -> list:
    if mode == "skip":
        print(f"bilinear_kernels: {ENV_SWITCH}=0, building without the compiled extension", file=sys.stderr)
        return []
    try:
        try:
            from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
        except ImportError as exc:
            raise ExtensionUnavailable("pybind11 is not installed") from exc
        cuda_home = find_cuda_home()
        cusolver_inc, cusolver_lib, link_cusolver, relative_rpath = find_cusolver(cuda_home)
        cudart = find_cudart_static(cuda_home)
    except ExtensionUnavailable as why:
        if mode == "force":
            raise SystemExit(f"bilinear_kernels: cannot build the compiled extension ({ENV_SWITCH}=1): {why}")
        print(f"bilinear_kernels: building without the compiled extension: {why}", file=sys.stderr)
        return []

    rpaths = [str(cusolver_lib)]
    if relative_rpath is not None:
        # the installed package sits beside nvidia/ in site-packages
        rpaths.insert(0, f"$ORIGIN/../{relative_rpath}")
    print(f"bilinear_kernels: building the compiled extension against {cuda_home} and cuSOLVER in "
          f"{cusolver_lib}", file=sys.stderr)
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    ParallelCompile("BILINEAR_KERNELS_BUILD_JOBS", default=0).install()  # one job per core
    return [Pybind11Extension(
        "bilinear_kernels._C",
        sources=sources,
        include_dirs=[str(d) for d in _include_dirs(cuda_home)] + [str(cusolver_inc)],
        library_dirs=[str(cusolver_lib)],
        extra_objects=[str(cudart)],
        extra_compile_args=["-O2"],
        # keep the static CUDA runtime's symbols private to this module
        extra_link_args=[link_cusolver, "-ldl", "-lrt", "-lpthread", "-Wl,--exclude-libs,ALL",
                         *[f"-Wl,-rpath,{r}" for r in rpaths]],
        cxx_std=17,
        optional=(mode == "auto"),
    )]


setup(ext_modules=extension_modules(build_mode()))
