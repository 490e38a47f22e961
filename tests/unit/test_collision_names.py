"""Collision names for received files: one rule for ``recv`` and the mount (#13.15)."""

from __future__ import annotations

import pytest

from dockercomms.core._internal.limits import check_filename
from dockercomms.fsmount.names import free_name


@pytest.mark.parametrize(
    "filename",
    ["é" * 120 + ".txt", "x" * 255, "a." + "b" * 250, "日本語" * 28 + ".tar.gz", "short.txt"],
    ids=["two-byte-chars", "no-extension", "long-extension", "three-byte-chars", "short"],
)
def test_mount_collision_names_fit_255_bytes(filename: str) -> None:
    taken = {filename}
    for _ in range(3):
        name = free_name(filename, "20261123-0123abcd", taken)
        assert name not in taken
        assert len(name.encode()) <= 255
        check_filename(name)  # whole characters only, still a safe name
        taken.add(name)
    assert "(20261123-0123abcd-3)" in name
