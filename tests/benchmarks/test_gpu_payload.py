"""scripts/gpu_payload.py: which wheels a lent GPU machine gets (the walk through the installed
dependencies' metadata, for Linux and Python 3.12), and the corpus file it writes. The download itself
needs PyPI and is not run here."""

import importlib.metadata
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_payload  # noqa: E402


def test_the_wheels_are_the_dependencies_the_image_lacks_at_the_versions_installed_here():
    wanted = gpu_payload.wanted()
    # what gpu.md §3 found missing on the image, directly or as a dependency's dependency
    for name in ("deepspeed", "datasets", "dill", "multiprocess", "fsspec", "transformers", "huggingface-hub",
                 "httpx2", "httpcore2", "truststore", "hjson", "pydantic", "pydantic-core", "annotated-types",
                 "typing-inspection"):
        assert name in wanted, name
    assert all(wanted[name] == f"{name}=={importlib.metadata.version(name)}" for name in wanted)
    assert not set(wanted) & (gpu_payload.ON_THE_IMAGE | gpu_payload.NOT_NEEDED)
    assert "pytest" not in wanted and "tensorflow-cpu" not in wanted  # extras are not followed


def test_markers_are_read_for_linux_and_python_3_12(monkeypatch):
    """Installed here: pinned to this version. Needed only by Python 3.12 (not installed here, on the
    project's Python 3.11, where zeta's marker is false): the declared requirement, for pip to resolve."""
    requires = {"root": ["alpha>=1", "beta; python_version < '3.12'", "gamma; sys_platform == 'win32'",
                         "delta; extra == 'test'", "torch", "epsilon; python_version >= '3.11'",
                         "zeta>=2,<3; python_version >= '3.12'"],
                "alpha": ["epsilon"], "epsilon": []}
    installed = {"alpha": "1.2", "epsilon": "3"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(gpu_payload.importlib.metadata, "requires", lambda name: requires[name])
    monkeypatch.setattr(gpu_payload.importlib.metadata, "version", version)
    assert gpu_payload.wanted("root") == {"alpha": "alpha==1.2", "epsilon": "epsilon==3", "zeta": "zeta<3,>=2"}


def test_a_dependency_not_installed_here_is_named(monkeypatch):
    monkeypatch.setattr(gpu_payload.importlib.metadata, "requires", lambda name: ["missing-pkg>=2"])

    def version(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gpu_payload.importlib.metadata, "version", version)
    with pytest.raises(SystemExit, match=r"root needs missing-pkg>=2, which is not installed here"):
        gpu_payload.wanted("root")


def test_the_corpus_is_whole_documents_one_per_line_up_to_the_limit(tmp_path):
    from zoo.corpus import embedded_corpus

    path = tmp_path / "corpus.txt"
    lines = gpu_payload.write_corpus(path, 20_000)
    text = path.read_text(encoding="utf-8")
    written = text.splitlines()
    assert len(written) == lines > 10 and len(text) <= 20_000
    documents = [" ".join(d.split()) for d in embedded_corpus("train")]
    assert written == [d for d in documents if d][:lines]  # in order, none cut
    assert not (tmp_path / "corpus.txt.partial").exists()
