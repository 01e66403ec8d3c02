"""Atomic files and folders: a writer that fails midway leaves the old content whole."""

import os

import pytest

from chatrex.utils import atomic
from chatrex.utils.atomic import atomic_write_text, open_atomic, recover_directory, replace_directory, staged_directory


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with open_atomic(path) as handle:
            handle.write("new, half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"


def test_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def _folder(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)


def test_a_failed_folder_save_leaves_the_old_folder(tmp_path):
    target = tmp_path / "ckpt"
    _folder(target, {"model.safetensors": "old weights", "config.json": "old config"})
    with pytest.raises(OSError, match="disk full"):
        with staged_directory(target) as staging:
            (staging / "model.safetensors").write_text("new wei")
            raise OSError("disk full")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"model.safetensors": "old weights",
                                                                 "config.json": "old config"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_folder_save_replaces_the_folder_and_keeps_what_it_is_told_to(tmp_path):
    target = tmp_path / "ckpt"
    _folder(target, {"model-00001-of-00002.safetensors": "old", "model-00002-of-00002.safetensors": "old",
                     "preprocessor_config.json": "kept", "config.json": "old config"})
    _folder(target / "extra", {"notes.txt": "kept too"})
    with staged_directory(target, keep=lambda name: not name.startswith("model") and name != "config.json") as d:
        (d / "model.safetensors").write_text("new")
        (d / "config.json").write_text("new config")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "extra", "model.safetensors",
                                                         "preprocessor_config.json"]
    assert (target / "config.json").read_text() == "new config"
    assert (target / "preprocessor_config.json").read_text() == "kept"
    assert (target / "extra" / "notes.txt").read_text() == "kept too"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_without_an_atomic_exchange_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    """Where the system cannot swap two folders in one step, the old one is renamed aside first; a crash
    before the new one is in place leaves it there, and the next save (or recover_directory) puts it back."""
    target = tmp_path / "final"
    _folder(target, {"model.pt": "old"})
    staging = tmp_path / ".final.new"
    _folder(staging, {"model.pt": "new"})
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def crash_on_the_second_rename(src, dst):
        if os.fspath(src) == os.fspath(staging):
            raise KeyboardInterrupt  # killed between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(staging, target)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not target.exists()
    recover_directory(target)
    assert (target / "model.pt").read_text() == "old"
    replace_directory(staging, target)  # without the crash: the new folder, nothing left aside
    assert (target / "model.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_the_exchange_swaps_in_one_step_where_available(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _folder(a, {"x": "a"})
    _folder(b, {"x": "b"})
    if not atomic._exchange(a, b):
        pytest.skip("this file system has no atomic exchange of folders")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
