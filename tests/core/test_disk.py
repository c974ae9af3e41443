"""A full disk ends in one line naming the disk and leaves no partial output (distill.core.disk)."""

import errno

import pytest

from distill.core.disk import DiskFull, is_disk_full, writing


def test_enospc_removes_the_partial_folder_and_names_the_disk(tmp_path):
    partial = tmp_path / ".tmp-step-000002"
    with pytest.raises(DiskFull) as caught:
        with writing(partial, "checkpoint", needed=5 * 2**20):
            partial.mkdir()
            (partial / "weights.bin").write_bytes(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not partial.exists()
    text = str(caught.value)
    assert "disk full writing checkpoint" in text and "5.0 MiB" in text and str(caught.value.mount) in text


def test_torch_short_write_counts_as_full_but_other_errors_pass_through(tmp_path):
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    assert not is_disk_full(RuntimeError("shape mismatch"))
    partial = tmp_path / "out.safetensors"
    with pytest.raises(ValueError):
        with writing(partial, "export"):
            partial.write_bytes(b"abc")
            raise ValueError("not a disk problem")
    assert partial.exists()  # only a full disk removes what was written
