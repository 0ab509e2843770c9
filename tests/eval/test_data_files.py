"""The evaluation data ships inside the package: found without any setting, overridable, and in the wheel and sdist."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import spantrace
from spantrace.eval.tasks import make_samples
from spantrace.eval.tasks.files import DATA_DIR_VARIABLE, FILES, SHA256, TaskDataError, data_dir, data_file

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGED = Path(spantrace.__file__).resolve().parent / "eval" / "data"
NOTICES = ("README.md", "NOTICE.md", "LICENSE-GSM8K.txt")  # provenance, attribution, GSM8K's MIT text


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_task_file_has_a_checksum():
    assert set(FILES.values()) | {"haystack_public_domain.txt"} == set(SHA256)


def test_the_bundled_files_are_found_without_the_environment(monkeypatch):
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    assert data_dir().resolve() == PACKAGED
    for name, digest in SHA256.items():
        path = data_file(name)
        assert path.parent.resolve() == PACKAGED
        assert sha256(path.read_bytes()) == digest
    for notice in NOTICES:
        assert (PACKAGED / notice).is_file()
    assert make_samples("gsm8k", 1)[0].answers == ("18",)
    assert make_samples("morehopqa", 1)[0].answers == ("116",)
    assert make_samples("hotpotqa", 1)[0].answers == ("yes",)


def test_the_environment_overrides_the_bundled_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(TaskDataError, match=f"unset {DATA_DIR_VARIABLE}"):
        data_file(FILES["gsm8k"])
    shutil.copyfile(PACKAGED / FILES["gsm8k"], tmp_path / FILES["gsm8k"])
    assert data_file(FILES["gsm8k"]) == tmp_path / FILES["gsm8k"]
    assert make_samples("gsm8k", 1)[0].answers == ("18",)


def test_a_missing_bundled_file_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    monkeypatch.setattr("spantrace.eval.tasks.files.files", lambda package: tmp_path)
    with pytest.raises(TaskDataError, match=f"reinstall it, or set {DATA_DIR_VARIABLE}"):
        data_file(FILES["hotpotqa"])


def test_the_wheel_and_the_sdist_carry_the_data_and_its_notices(tmp_path):
    """Builds both from a copy of the sources (no stale build/ folder, nothing written into the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPOSITORY / name, source / name)
    shutil.copytree(REPOSITORY / "spantrace", source / "spantrace", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    for hook in ("build_sdist", "build_wheel"):  # one hook per process, as pip and build call them (offline)
        build = f"import sys; from setuptools import build_meta; build_meta.{hook}(sys.argv[1])"
        command = [sys.executable, "-c", build, str(out)]
        subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    wanted = [*SHA256, *NOTICES]

    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"spantrace/eval/data/{name}" for name in wanted} <= names
        for name, digest in SHA256.items():
            assert sha256(archive.read(f"spantrace/eval/data/{name}")) == digest

    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {Path(*Path(m.name).parts[1:]).as_posix(): m for m in archive.getmembers()}
        assert {f"spantrace/eval/data/{name}" for name in wanted} <= set(members)
        for name, digest in SHA256.items():
            assert sha256(archive.extractfile(members[f"spantrace/eval/data/{name}"]).read()) == digest
