"""Append-only files (ledger, labels, judge cache, metrics): a line is appended whole or not at all."""

import json
import os
import subprocess
import sys

import pytest

from bpo.io import DamagedFileError, StorageError, append_lines, read_jsonl


def test_a_torn_last_line_is_dropped_on_read_and_removed_before_the_next_append(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"b": ')  # a write cut by a kill or a full disk
    assert read_jsonl(f) == [{"a": 1}]
    append_lines(f, [json.dumps({"c": 3})])  # before: glued onto the torn line, blocking the file for good
    assert f.read_text() == '{"a": 1}\n{"c": 3}\n'
    f.write_text('{"only": ')  # a torn first line
    append_lines(f, ['{"d": 4}'])
    assert read_jsonl(f) == [{"d": 4}]


def test_a_damaged_line_in_the_middle_is_refused_naming_file_and_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"b": {"a": 2}\n{"c": 3}\n')  # what the glued line used to look like
    with pytest.raises(DamagedFileError, match=r"x\.jsonl:2: damaged line"):
        read_jsonl(f)


FULL_DISK = """
import json, resource, signal, sys
from bpo.io import StorageError, append_lines
path = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
size = len(open(path, "rb").read())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, size + 10))  # room for 10 more bytes only
try:
    append_lines(path, [json.dumps({"label": "x" * 100})])
except StorageError as err:
    print(err)
"""


def test_a_write_cut_by_a_full_disk_leaves_nothing_behind(tmp_path):
    """A label POST on a full disk left a partial line; after space was freed the next label glued onto it."""
    f = tmp_path / "labels.jsonl"
    f.write_text('{"a": 1}\n')
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(f)], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(f"cannot append to {f} (") and "nothing of this write was kept" in done.stdout
    assert f.read_text() == '{"a": 1}\n'  # cut back: no partial line
    append_lines(f, ['{"b": 2}'])  # space freed: the next write is whole and readable
    assert read_jsonl(f) == [{"a": 1}, {"b": 2}]


def test_a_storage_error_is_one_line(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(StorageError) as err:
        append_lines(tmp_path / "dir.jsonl", ["{}"])
    assert "\n" not in str(err.value) and "dir.jsonl" in str(err.value)


def test_a_folder_moved_aside_by_a_killed_replace_is_put_back_or_removed(tmp_path):
    from bpo.io import replace_dir, temp_dir

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # the pid of a process that has ended (a killed bpo)
    busy = tmp_path / f".other.bpo-old-{os.getppid()}"  # a live process between its two renames: left alone
    busy.mkdir()
    old = tmp_path / f".model.bpo-old-{dead}"  # killed after moving model aside, before the new one arrived
    old.mkdir()
    (old / "weights").write_text("old")
    tmp = temp_dir(tmp_path, ".model.bpo-tmp-")  # the next attempt starts here
    assert (tmp_path / "model" / "weights").read_text() == "old" and not old.exists()
    (tmp / "weights").write_text("new")
    replace_dir(tmp, tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [busy.name, "model"]
    gone = tmp_path / f".model.bpo-old-{dead}"  # killed after the new one arrived, before the old was removed
    gone.mkdir()
    temp_dir(tmp_path, "x")
    assert not gone.exists() and (tmp_path / "model" / "weights").read_text() == "new"


def test_a_manifest_that_is_not_a_mapping_is_damaged_not_a_traceback(tmp_path):
    from bpo.io import verify, write_manifest

    (tmp_path / "f").write_text("x")
    write_manifest(tmp_path)
    assert verify(tmp_path) is None
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert verify(tmp_path) == "damaged manifest"


def test_figures_are_written_without_float_noise(tmp_path):
    """eval.json showed 0.14595000000000008."""
    from bpo.io import tidy, write_json

    noisy = 0.1 + 0.2
    assert repr(noisy) == "0.30000000000000004"  # the float noise of a sum
    write_json(tmp_path / "e.json", tidy({"mean": noisy, "ci": [1 / 3, 2], "n": 64, "name": "x"}))
    assert json.loads((tmp_path / "e.json").read_text()) == {"mean": 0.3, "ci": [0.333333333333, 2], "n": 64,
                                                             "name": "x"}  # fmt: skip
