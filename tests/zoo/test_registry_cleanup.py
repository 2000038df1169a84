"""What an interrupted publish leaves in the registry: recognised by its lock, listed by `zoo verify`,
removed by `zoo gc` and by the next publish, never blocking a later publish of the same version.

The crashes are real: a child process publishes and SIGKILLs itself at a chosen point, so the kernel,
not our code, releases what it held."""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import zoo.registry
from zoo.__main__ import main
from zoo.registry import Registry

FILES = {"config.json": b'{"a": 1}\n', "model.safetensors": b"weights", "vocab.txt": b"[PAD]\n"}

# Publishes FOLDER as NAME@VERSION with zoo.registry and kills itself at POINT.
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from zoo import registry
    root, folder, point = sys.argv[1:4]
    die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    store = registry.Registry(root)
    if point == "saving":  # as zoo.publish does: save the model into a staging folder first
        with store.staging(".stage-") as staging:
            shutil.copyfile(os.path.join(folder, "model.safetensors"), staging / "model.safetensors")
            die()
    if point == "before-ref":  # blobs and snapshot moved, the version's ref (the commit point) not written
        real_link = os.link
        os.link = lambda src, dst, **kw: die() if os.path.basename(os.path.dirname(dst)) == "refs" else real_link(src, dst, **kw)
    if point == "copying":  # the second file is being copied into the repo's staging folder
        copies = []
        real = shutil.copyfile
        def copyfile(*args):
            copies.append(args)
            if len(copies) == 2:
                die()
            return real(*args)
        registry.shutil.copyfile = copyfile
    store.publish_folder(registry.Path(folder), "m", "1.0")
""")


def saved_folder(tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir(exist_ok=True)
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    return folder


def killed_publish(registry, folder, point):
    result = subprocess.run([sys.executable, "-c", CHILD, str(registry), str(folder), point],
                            capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result


def staging_pid(path):
    return int(path.name.split("-")[1])


def test_killed_before_the_ref_never_blocks_the_same_version_and_the_next_publish_cleans_up(registry, tmp_path, capsys):
    folder = saved_folder(tmp_path)
    killed_publish(registry, folder, "before-ref")
    store = Registry(registry)
    assert store.versions("m") == []  # nothing half-published is visible

    found = store.leftovers()
    repo = registry / "models--zoo--m"
    by_kind = {}
    for item in found:
        by_kind.setdefault(item.kind, []).append(item)
    assert sorted(by_kind) == ["staging folder", "unreferenced blob", "unreferenced snapshot"]
    (staging,) = by_kind["staging folder"]
    assert staging.path.parent == repo and staging.path.name.startswith(".publish-") and not staging.active
    assert staging.owner == staging_pid(staging.path) and staging.size == 40  # the ref it was about to link
    blobs = {item.path.name: item.size for item in by_kind["unreferenced blob"]}
    assert len(blobs) == len(FILES) + 1  # the files and the manifest, all moved into blobs/
    assert all(blobs[hashlib.sha256(data).hexdigest()] == len(data) for data in FILES.values())
    (snapshot,) = by_kind["unreferenced snapshot"]
    assert snapshot.size == sum(len(os.readlink(link)) for link in snapshot.path.iterdir())

    assert main(["verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"0 version(s) in {registry}: 0 verified, 0 failed"
    assert out[1:-1] == [f"leftover: {item.describe()}" for item in found]
    total = sum(item.size for item in found)
    assert out[-1] == (f"{len(found)} leftover(s) of interrupted publishes, {zoo.registry.format_size(total)}: "
                       "`python -m zoo gc` removes them")
    assert out[1] == (f"leftover: {staging.path} (staging folder of an interrupted publish, pid {staging.owner} is gone; "
                      "40 bytes)")

    # the same version publishes (the dead process's locks died with it), and the publish removes the litter
    entry = store.publish_folder(folder, "m", "1.0")
    assert entry.ref == "m@1.0" and store.versions("m") == ["1.0"]
    assert store.leftovers() == []
    assert sorted(p.name for p in repo.iterdir()) == [".lock", "blobs", "refs", "snapshots"]
    assert main(["verify"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"m@1.0: {len(FILES)} files verified ({entry.path})",
        f"1 version(s) in {registry}: 1 verified, 0 failed",
    ]


def test_killed_while_copying_or_saving_is_listed_and_removed(registry, tmp_path, capsys):
    folder = saved_folder(tmp_path)
    store = Registry(registry)
    killed_publish(registry, folder, "copying")
    (copying,) = store.leftovers()
    assert (copying.path.parent, copying.path.name[:9], copying.kind) == (registry / "models--zoo--m", ".publish-", "staging folder")
    assert copying.size == len(FILES["config.json"]) and copying.owner == staging_pid(copying.path) and not copying.active
    assert copying.path.with_name(copying.path.name + ".lock").is_file()

    # the next publish removes it before it writes anything, even one that then dies while saving
    killed_publish(registry, folder, "saving")
    assert not copying.path.exists() and not copying.path.with_name(copying.path.name + ".lock").exists()
    (saving,) = store.leftovers()
    assert (saving.path.parent, saving.path.name[:7], saving.kind) == (registry, ".stage-", "staging folder")
    assert saving.size == len(FILES["model.safetensors"]) and saving.owner == staging_pid(saving.path)

    assert main(["gc", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"would remove {saving.path} (staging folder of an interrupted publish, pid {saving.owner} is gone; 7 bytes)",
        "would remove 1 leftover(s), 7 bytes"]
    assert store.leftovers() == [saving]  # a dry run removes nothing

    assert main(["gc"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"removed {saving.describe()}", "removed 1 leftover(s), 7 bytes"]
    assert not any(p.name.startswith((".stage-", ".publish-")) for p in [*registry.iterdir(), *(registry / "models--zoo--m").iterdir()])
    assert main(["gc"]) == 0
    assert capsys.readouterr().out == "nothing to remove\n"
    assert store.publish_folder(folder, "m", "1.0").ref == "m@1.0"


def test_a_running_publish_is_never_collected(registry, tmp_path, capsys):
    store = Registry(registry)
    with store.staging(".stage-") as staging:
        (staging / "model.safetensors").write_bytes(b"12345")
        (item,) = store.collect_garbage()
        assert item.active and item.path == staging and item.owner == os.getpid()
        assert item.describe() == f"{staging} (staging folder of a publish in progress, pid {os.getpid()}; 5 bytes)"
        assert staging.is_dir()
        assert main(["gc"]) == 0
        assert capsys.readouterr().out.splitlines() == [f"kept {item.describe()}", "nothing to remove"]
        assert main(["verify"]) == 0  # not a leftover: verify does not list it
        assert capsys.readouterr().out == f"0 version(s) in {registry}: 0 verified, 0 failed\n"
        # a publish in another folder meanwhile leaves it alone too
        store.publish_folder(saved_folder(tmp_path), "m", "1.0")
        assert (staging / "model.safetensors").read_bytes() == b"12345"
    assert not staging.exists() and not staging.with_name(staging.name + ".lock").exists()


def make_old(*paths):
    then = time.time() - zoo.registry.STALE_AFTER_S - 60
    for path in paths:
        os.utime(path, (then, then), follow_symlinks=False)


def test_staging_folder_without_a_lock_is_a_leftover_once_it_is_old(registry, tmp_path):
    """Folders written by a zoo from before the locks (tempfile names, no lock file) are litter too,
    but only once they are an hour old: a young one may belong to a publish we cannot see."""
    old = registry / ".stage-k2j4h5"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_bytes(b"x" * 2500)
    store = Registry(registry)
    (young,) = store.collect_garbage()
    assert young.active and young.owner is None and old.is_dir()
    assert young.describe() == (f"{old} (staging folder of a publish that may still be running: no pid on record, "
                                "kept until it is 60 minutes old; 2.5 KB)")
    make_old(old)
    (item,) = store.leftovers()
    assert item.describe() == f"{old} (staging folder of an interrupted publish; 2.5 KB)" and not item.active
    store.publish_folder(saved_folder(tmp_path), "m", "1.0")
    assert not old.exists()


def test_a_lock_without_a_pid_is_active_until_it_is_old(registry):
    folder = registry / ".stage-7-0123abcd"
    folder.mkdir(parents=True)
    lock = registry / ".stage-7-0123abcd.lock"
    lock.write_bytes(b"")  # as a publisher leaves it between creating its lock and writing its pid
    store = Registry(registry)
    (item,) = store.collect_garbage()
    assert item.active and item.path == folder and folder.is_dir() and lock.is_file()
    make_old(lock)
    (item,) = store.collect_garbage()
    assert not item.active and not folder.exists() and not lock.exists()


def test_a_sweep_between_creating_and_locking_a_staging_lock_spares_the_publish(registry, monkeypatch):
    """Another process's gc runs right after staging() creates its lock file, before it is locked.
    (Run in this process: a second open of the file conflicts with our flock as another process's would.)"""
    registry.mkdir()
    real_open = os.open
    sweeps = []

    def open_then_sweep(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_EXCL and not sweeps:  # the staging lock, just created
            sweeps.append(Registry(registry).collect_garbage())
        return fd

    monkeypatch.setattr(os, "open", open_then_sweep)
    with Registry(registry).staging(".stage-") as staging:
        lock = staging.with_name(staging.name + ".lock")
        assert sweeps and all(item.active for item in sweeps[0])  # it removed nothing
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        (staging / "model.safetensors").write_bytes(b"12345")
        (item,) = Registry(registry).collect_garbage()
        assert item.active and item.path == staging and item.owner == os.getpid()
        assert (staging / "model.safetensors").read_bytes() == b"12345"
    assert list(registry.iterdir()) == []


def test_a_lock_its_finished_publish_just_removed_is_not_a_leftover(registry, monkeypatch):
    """A publish finishes (removes its folder and its lock, then drops the flock) between the sweep's
    open of the lock and its flock: the sweep holds a lock no one can see and must not report it."""
    folder = registry / ".stage-7-0123abcd"
    folder.mkdir(parents=True)
    lock = registry / ".stage-7-0123abcd.lock"
    lock.write_text(json.dumps({"pid": os.getpid()}))
    real_flock = fcntl.flock

    def finish_then_flock(fd, operation):
        if lock.exists():
            shutil.rmtree(folder)
            lock.unlink()
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", finish_then_flock)
    assert Registry(registry).collect_garbage() == []


def read_only_litter(registry, tmp_path):
    """A published version, a dead publish's staging folder and an orphan blob; no `<repo>/.lock`."""
    Registry(registry).publish_folder(saved_folder(tmp_path), "m", "1.0")
    repo = registry / "models--zoo--m"
    (repo / ".lock").unlink()
    dead = repo / ".publish-7-0123abcd"
    dead.mkdir()
    (dead / "blob").write_bytes(b"12")
    (repo / ".publish-7-0123abcd.lock").write_text(json.dumps({"pid": 7}))
    (repo / "blobs" / ("0" * 64)).write_bytes(b"orphan")
    return repo, dead


def tree(root):
    return sorted((str(p), p.lstat().st_mtime_ns) for p in [root, *root.rglob("*")])


def refuse_writes(monkeypatch, path=None):
    """os.open as on a read-only registry (tests run as root, where chmod does not stop writes)."""
    real_open = os.open

    def read_only_open(file, flags, *args, **kwargs):
        if (flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and path is None) or str(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)


def test_verify_writes_nothing_and_lists_a_read_only_registry(registry, tmp_path, monkeypatch, capsys):
    repo, dead = read_only_litter(registry, tmp_path)
    before = tree(registry)
    refuse_writes(monkeypatch)
    assert main(["verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("m@1.0: 3 files verified")
    assert out[2:4] == [f"leftover: {dead} (staging folder of an interrupted publish, pid 7 is gone; 2 bytes)",
                        f"leftover: {repo / 'blobs' / ('0' * 64)} (unreferenced blob of an interrupted publish; 6 bytes)"]
    assert tree(registry) == before


def test_an_unreadable_lock_is_a_warning_not_a_traceback(registry, tmp_path, monkeypatch, capsys, caplog):
    repo, dead = read_only_litter(registry, tmp_path)
    refuse_writes(monkeypatch, path=repo / ".publish-7-0123abcd.lock")
    with caplog.at_level("WARNING", logger="zoo.registry"):
        assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "m@1.0: 3 files verified" in out and "unreferenced blob" in out and str(dead) not in out
    (warning,) = caplog.messages
    assert warning.startswith(f"warning: skipped {repo / '.publish-7-0123abcd.lock'} while looking for leftovers")
    assert "Permission denied" in warning


def test_verify_without_a_name_verifies_every_version(registry, tmp_path, capsys):
    folder = saved_folder(tmp_path)
    store = Registry(registry)
    first = store.publish_folder(folder, "m", "1.0")
    (folder / "config.json").write_bytes(b'{"a": 2}\n')
    second = store.publish_folder(folder, "m", "2.0")
    other = store.publish_folder(folder, "n", "0.1")
    blob = (first.path / "model.safetensors").resolve()
    os.chmod(blob, 0o644)
    blob.write_bytes(b"weightz")  # a blob both versions of m link to (n has its own blobs)
    (second.path / "config.json").resolve().write_bytes(b'{"a": 3}\n')
    assert main(["verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0:2] for line in out[:2]] == [["m@1.0", "FAILED"], ["m@2.0", "FAILED"]]
    assert out[2] == f"n@0.1: {len(FILES)} files verified ({other.path})"
    assert out[0] == (f"m@1.0: FAILED: m@1.0: file model.safetensors does not match its sha256 (tampered): expected "
                      f"{json.loads((first.path / 'zoo_manifest.json').read_text())['files']['model.safetensors']['sha256']}, "
                      f"got {zoo.registry.sha256_file(blob)}")
    assert out[3] == f"3 version(s) in {registry}: 1 verified, 2 failed"
    blob.write_bytes(b"weights")
    assert main(["verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"m@1.0: {len(FILES)} files verified ({first.path})"
    assert out[1].startswith("m@2.0: FAILED: m@2.0: file config.json does not match its sha256 (tampered)")
    assert out[2] == f"n@0.1: {len(FILES)} files verified ({other.path})"
    assert out[3] == f"3 version(s) in {registry}: 2 verified, 1 failed"
    assert main(["verify", "n@0.1"]) == 0
    assert capsys.readouterr().out == f"n@0.1: {len(FILES)} files verified ({other.path})\n"


def test_list_columns_line_up_with_long_version_names(registry, tmp_path, capsys):
    folder = saved_folder(tmp_path)
    store = Registry(registry)
    extra = {"family": "gau-alpha", "num_parameters": 1234567, "metrics": {"heldout/acc": 0.5}}
    store.publish_folder(folder, "m", "1.0", extra_manifest=extra)
    long_version = "2.0.0-rc1+pretrained-on-the-whole-corpus-for-a-long-time"
    (folder / "config.json").write_bytes(b"{}\n")
    store.publish_folder(folder, "a-rather-long-model-name", long_version,
                         extra_manifest={**extra, "family": "deepnet", "num_parameters": 12, "metrics": {}})
    created = {e.ref: e.manifest["created"] for e in store.entries()}
    assert main(["list"]) == 0
    long_ref = f"a-rather-long-model-name@{long_version}"
    width = len(long_ref)
    assert capsys.readouterr().out.splitlines() == [
        f"{'model':<{width}}  family     parameters  created               metrics",
        f"{long_ref}  deepnet            12  {created[long_ref]}",
        f"{'m@1.0':<{width}}  gau-alpha   1,234,567  {created['m@1.0']}  heldout/acc=0.5",
    ]


@pytest.mark.parametrize("prefix", [".tmp-", "stage-"])
def test_staging_prefix_is_checked(registry, prefix):
    with pytest.raises(ValueError, match=r"staging prefix must be one of \('.stage-', '.publish-'\)"):
        with Registry(registry).staging(prefix):
            pass
