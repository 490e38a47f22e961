"""The name grammar (core/names.py) and the folder each name gets in inbox/ and sent/."""

from __future__ import annotations

import pytest

from dockercomms.core._internal.limits import check_filename
from dockercomms.core.errors import ConfigError
from dockercomms.core.names import MAX_NAME_CHARS, check_name, is_valid_name
from dockercomms.fsmount.names import RESERVED, folder_name

VALID = [
    "bob",
    "alice@example.com",
    "first.last+dockercomms@mail.example.org",
    "team-a",
    "team_a",
    "ci",
    "0",
    "x" * MAX_NAME_CHARS,
]

REFUSED = {
    "": "empty",
    "@": "'@'",
    "@vm": "'@'",
    "../etc": "'.'",
    ".hidden": "'.'",
    "bob@example.com/x": "'/'",
    "team/x": "'/'",
    "bob smith": "' '",
    "bob\n": "\\x0a",
    "jürgen": "'ü'",
    "bob@": "'@'",
    "-rf": "'-'",
    "x" * (MAX_NAME_CHARS + 1): str(MAX_NAME_CHARS),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert check_name(name, "recipient") == name
    assert is_valid_name(name)


@pytest.mark.parametrize(("name", "why"), REFUSED.items())
def test_refused_names_say_why_and_show_an_example(name: str, why: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(ConfigError) as raised:
        check_name(name, "recipient")
    text = str(raised.value)
    assert text.startswith("recipient ")
    assert why in text
    assert "alice@example.com" in text  # an example of a valid name
    assert "\n" not in text  # control characters are escaped, never printed


def test_an_empty_user_name_is_pointed_out() -> None:
    """``init --identity "$USER@$(hostname)"`` with no $USER (a container) gave '@vm'."""
    with pytest.raises(ConfigError, match=r"\$USER"):
        check_name("@vm", "identity")


def test_folder_names_are_the_names_themselves() -> None:
    for name in VALID:
        assert folder_name(name) == name


def test_folder_names_are_unambiguous() -> None:
    """No two names share a folder, and an old invalid name never takes a valid one's."""
    legacy = [
        "team/x",
        "team%2Fx",
        "team%x",
        "%",
        "",
        ".",
        "..",
        "@",
        ".rejected",
        ".status.json",
        "a\nb",
        "a\\b",
        "jürgen",
        "x" * 300,
        "x" * 299 + "y",
    ]
    names = [*VALID, "team_x", "team-x", *legacy]
    folders = [folder_name(name) for name in names]
    assert len(set(folders)) == len(names)
    for name, folder in zip(names, folders, strict=True):
        assert check_filename(folder) == folder  # one safe path component
        assert not folder.startswith(".")
        assert folder not in RESERVED
        if not is_valid_name(name):
            assert not is_valid_name(folder), (name, folder)
