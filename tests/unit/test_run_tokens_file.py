"""`make run` writes the generated credentials to .run/tokens.json readable by its owner only, and
never through a moment with wider permissions: the content goes into a temporary file created 0600,
which then replaces the old file."""

import os
import stat

import pytest

from devtools import run


def mode(path_or_fd) -> int:
    return stat.S_IMODE(os.stat(path_or_fd).st_mode)


def test_the_tokens_file_is_created_0600_before_a_byte_is_written(tmp_path, monkeypatch):
    target = tmp_path / "tokens.json"
    target.write_text("old")
    os.chmod(target, 0o644)  # an older file's wide mode must not carry over
    opened = []
    real_open = os.open

    def recording_open(path, flags, mode_=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode_, *args, **kwargs)
        opened.append((str(path), flags, os.fstat(fd).st_size, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", recording_open)
    umask = os.umask(0)  # a permissive umask must not widen the new file either
    try:
        run.write_private(target, '{"DARK_API_TOKENS": "op-x"}')
    finally:
        os.umask(umask)

    ((path, flags, size, created_mode),) = opened
    assert path != str(target), "written in place, not through a temporary file"
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert size == 0 and created_mode == 0o600
    assert mode(target) == 0o600
    assert target.read_text() == '{"DARK_API_TOKENS": "op-x"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def failing_fsync(_fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        run.write_private(tmp_path / "tokens.json", "{}")
    assert list(tmp_path.iterdir()) == []
