"""A new user's first hour on the command line: names, errors, settings and help.

Every command runs in-process (``Party.cli``) except where the process itself is
the point (a closed pipe); each asserts on the exit code and on what a person reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dockercomms.cli.main import build_parser
from dockercomms.core._internal.send import SendRequest
from tests.conftest import Party, introduce, make_party

EXAMPLE = "alice@example.com"  # what every refused name's message offers instead


@pytest.fixture
def alice(tmp_path: Path) -> Party:
    return make_party(tmp_path, "alice@example.com", f"oci-layout:{tmp_path / 'layout'}")


def newcomer(tmp_path: Path, name: str = "new") -> Party:
    """An identity that has not run ``init`` yet."""
    return Party(name, tmp_path / f"home-{name}", f"oci-layout:{tmp_path / 'layout'}", tmp_path)


def settings_of(party: Party) -> dict[str, object]:
    return tomllib.loads((party.home / "config.toml").read_text())


def tags_in(party: Party) -> list[str]:
    """Every tag but those of the card ``init`` published (and its signature)."""
    with party.workspace().client() as client:
        tags = client.list_tags()
        cards = [client.fetch_manifest(t)[1] for t in tags if t.startswith("card-")]
    return [t for t in tags if not t.startswith(("card-", *(f"bundle-{d[7:19]}" for d in cards)))]


# --- names (#16.6, #13.17) ---------------------------------------------------------


@pytest.mark.parametrize("name", ["", "../etc", "bob@example.com/x", "@vm"])
def test_send_refuses_a_bad_recipient_before_pushing(
    alice: Party, tmp_path: Path, name: str
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    result = alice.cli("send", str(note), "-r", name)
    assert result.code == 1, result.err
    assert "recipient" in result.err and EXAMPLE in result.err
    assert tags_in(alice) == []


def test_init_refuses_a_bad_identity(tmp_path: Path) -> None:
    """The README's ``"$USER@$(hostname)"`` with no $USER is '@host'."""
    party = newcomer(tmp_path)
    for name in ("@", "@vm", "team/x", ".hidden"):
        result = party.cli("init", "--identity", name)
        assert result.code == 1, result.err
        assert EXAMPLE in result.err
    assert "$USER" in party.cli("init", "--identity", "@vm").err
    assert not (party.home / "config.toml").exists()


def test_trust_and_default_recipients_refuse_bad_names(alice: Party, tmp_path: Path) -> None:
    key = alice.public_key()
    result = alice.cli("trust", "add", "team/x", "--key", str(key))
    assert result.code == 1 and EXAMPLE in result.err
    # A file, not a folder: if the name were not refused first, no mount could start.
    mountpoint = tmp_path / "not-a-folder"
    mountpoint.write_text("")
    result = alice.cli("mount", str(mountpoint), "--to", "../x")
    assert result.code == 1 and "--to" in result.err and EXAMPLE in result.err
    result = alice.cli("sync", "--outbox", str(tmp_path / "out"), "--to", "a b", "--once")
    assert result.code == 1 and EXAMPLE in result.err
    assert not (tmp_path / "out").exists()


def test_one_key_speaks_for_one_name(alice: Party, tmp_path: Path) -> None:
    bob = make_party(tmp_path, "bob", alice.repo)
    key = str(bob.public_key())
    alice.ok("trust", "add", "bob", "--key", key)
    alice.ok("trust", "add", "bob", "--key", key)  # the same entry again is fine
    result = alice.cli("trust", "add", "bobby", "--key", key)
    assert result.code == 1
    assert "'bob'" in result.err and "trust remove bob" in result.err
    issuer = "https://issuer.example.com"
    alice.ok("trust", "add", "carol", "--identity", "carol@example.com", "--issuer", issuer)
    result = alice.cli(
        "trust", "add", "caroline", "--identity", "carol@example.com", "--issuer", issuer
    )
    assert result.code == 1 and "'carol'" in result.err
    assert "bobby" not in alice.ok("trust", "list")


def test_an_old_trust_file_with_one_key_under_two_names_is_reported(
    alice: Party, tmp_path: Path
) -> None:
    bob = make_party(tmp_path, "bob", alice.repo)
    alice.ok("trust", "add", "bob", "--key", str(bob.public_key()))
    trust_file = alice.home / "trust.json"
    document = json.loads(trust_file.read_text())
    (entry,) = [e for e in document["entries"] if e["name"] == "bob"]
    document["entries"].append(entry | {"name": "team/x"})
    trust_file.write_text(json.dumps(document))
    result = alice.cli("trust", "list")
    assert result.code == 0
    assert "'bob'" in result.err and "'team/x'" in result.err
    assert "only 'bob' can send" in result.err
    assert "not a valid name" in result.err


def test_an_old_identity_outside_the_grammar_still_receives(alice: Party, tmp_path: Path) -> None:
    """Decided: an existing config keeps working, and every command says what to fix."""
    bob = make_party(tmp_path, "bob", alice.repo)
    introduce(alice, bob)
    config = bob.home / "config.toml"
    config.write_text(config.read_text().replace('identity = "bob"', 'identity = "bob smith"'))
    note = tmp_path / "legacy.txt"
    note.write_text("to an old name")
    workspace = alice.workspace()
    with workspace.client() as client:
        workspace.sender(client).send(SendRequest(path=note, recipient="bob smith"))
    result = bob.cli("recv", "--out", str(tmp_path / "in"), "--json")
    assert result.code == 0, result.err
    assert [o["status"] for o in json.loads(result.out)] == ["received"]
    assert "'bob smith' is not a valid name" in result.err
    assert "init --force --identity" in result.err


# --- errors in one sentence (#16.7) ---------------------------------------------------


@pytest.mark.parametrize("argv", [["status"], ["ls", "--json"], ["key", "export"]])
def test_a_reader_that_goes_away_is_not_an_error(alice: Party, argv: list[str]) -> None:
    """``dockercomms status | head -1``: the pipe closes before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from dockercomms.cli.main import run; run()", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, **alice.env},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == b""
    assert done.returncode == 141  # 128 + SIGPIPE, what `ls | head` reports for ls


def test_umount_of_a_plain_folder_says_so_plainly(alice: Party, tmp_path: Path) -> None:
    result = alice.cli("umount", str(tmp_path))
    assert result.code == 1
    assert result.err.strip() == f"dockercomms: error: {tmp_path} is not mounted"


def test_send_says_what_is_wrong_with_the_file(alice: Party, tmp_path: Path) -> None:
    missing = alice.cli("send", str(tmp_path / "nonexistent"), "-r", "bob")
    assert missing.code == 1
    assert "no such file" in missing.err
    folder = alice.cli("send", str(tmp_path), "-r", "bob")
    assert folder.code == 1
    assert "is a folder" in folder.err


def test_an_unknown_option_shows_the_subcommands_usage(alice: Party, tmp_path: Path) -> None:
    result = alice.cli("send", str(tmp_path), "-r", "bob", "--bogus")
    assert result.code == 1
    assert result.err.startswith("usage: dockercomms send ")
    assert "unrecognized arguments: --bogus" in result.err
    assert "dockercomms send --help" in result.err
    nested = alice.cli("trust", "add", "bob", "--bogus")
    assert nested.code == 1 and nested.err.startswith("usage: dockercomms trust add ")


def test_bad_key_files_get_one_plain_sentence(alice: Party, tmp_path: Path) -> None:
    garbage = tmp_path / "bob.pub"
    garbage.write_text("not a key\n")
    result = alice.cli("trust", "add", "bob", "--key", str(garbage))
    assert result.code == 1
    assert str(garbage) in result.err and "PEM public key" in result.err
    assert "cryptography" not in result.err and result.err.count("\n") == 1
    signing_key = alice.home / "keys" / "signing.key"
    signing_key.write_text("damaged\n")
    result = alice.cli("key", "export")
    assert result.code == 1
    assert str(signing_key) in result.err and "cryptography" not in result.err


# --- settings (#16.13) -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "invalid", "typo"])
def test_init_validates_the_sigstore_trust(tmp_path: Path, kind: str) -> None:
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"mediaType": "nope"}')
    value = {"missing": str(tmp_path / "gone.json"), "invalid": str(invalid), "typo": "publicgood"}
    party = newcomer(tmp_path)
    result = party.cli("init", "--identity", "carol", "--sigstore-trust", value[kind])
    assert result.code == 1, result.err
    assert "public-good" in result.err
    assert not (party.home / "config.toml").exists()


def test_init_does_not_silently_ignore_new_settings(alice: Party) -> None:
    result = alice.cli("init", "--identity", alice.name, "--sigstore-trust", "staging")
    assert result.code == 1
    assert "dockercomms config set sigstore_trust staging" in result.err
    assert settings_of(alice)["sigstore_trust"] == "public-good"
    assert "already set up" in alice.ok("init", "--identity", alice.name)


def test_config_set_changes_one_setting_and_keeps_the_rest(alice: Party) -> None:
    before = settings_of(alice)
    alice.ok("config", "set", "compression", "gzip")
    alice.ok("config", "set", "sigstore-trust", "staging")
    after = settings_of(alice)
    assert after == before | {"compression": "gzip", "sigstore_trust": "staging"}
    shown = json.loads(alice.ok("config", "show", "--json"))
    assert shown["compression"] == "gzip" and shown["identity"] == alice.name
    for key, value in [
        ("compression", "lzma"),
        ("ttl_seconds", "-5"),
        ("chunk_bytes", "many"),
        ("sigstore_trust", "publicgood"),
        ("signing", "gpg"),
        ("identity", "bob"),
        ("colour", "blue"),
    ]:
        result = alice.cli("config", "set", key, value)
        assert result.code == 1, (key, result.err)
    assert settings_of(alice) == after
    assert "init --force --identity" in alice.cli("config", "set", "identity", "bob").err


def test_repository_is_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    party = newcomer(tmp_path)
    party.ok("init", "--identity", "dana", "--repo", "oci-layout:here")
    assert settings_of(party)["repository"] == f"oci-layout:{tmp_path / 'here'}"


def test_config_set_takes_the_sealing_switches_and_an_absolute_storage_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    party = newcomer(tmp_path)
    party.ok("init", "--identity", "dana")
    (tmp_path / "config.yml").write_text("storage:\n  filesystem:\n    rootdirectory: /srv\n")
    party.ok("config", "set", "storage_config", "config.yml")
    party.ok("config", "set", "require-sealed", "true")
    party.ok("config", "set", "send_plaintext", "false")
    settings = settings_of(party)
    assert settings["storage_config"] == str(tmp_path / "config.yml")
    assert settings["require_sealed"] is True and settings["send_plaintext"] is False
    for key, value, why in [
        ("storage_config", "missing.yml", "no such file"),
        ("require_sealed", "yes", "true or false"),
    ]:
        result = party.cli("config", "set", key, value)
        assert result.code == 1 and why in result.err, (key, result.err)
    assert settings_of(party) == settings


# --- issuers (#16.14) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "warning"),
    [("github", "not a URL"), ("https://accounts.google.com/", "ends with '/'")],
)
def test_doubtful_issuers_are_warned_about(alice: Party, issuer: str, warning: str) -> None:
    result = alice.cli("trust", "add", "erin", "--identity", "erin@example.com", "--issuer", issuer)
    assert result.code == 0, result.err
    assert "warning" in result.err and warning in result.err


# --- help (#16.15) -------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, (*path, name))
    return found or [(path, parser)]


def test_every_command_explains_itself() -> None:
    top = build_parser()
    assert "exit codes" in top.format_help().lower()
    commands = _commands(top)
    assert len(commands) > 15
    for path, parser in commands:
        where = " ".join(path)
        assert parser.description and len(parser.description) > 60, where
        lines = parser.format_help().rstrip().splitlines()
        assert lines[-1].strip().startswith("dockercomms "), where  # ends with an example
        assert "example" in parser.format_help().lower(), where
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue  # --help itself; options only dockercomms passes to itself
            assert action.help, f"{where} {action.dest}"
            if action.type in (int, float):  # a number: its unit (metavar) and default
                assert action.metavar and "default" in action.help, f"{where} {action.dest}"


def test_exit_codes_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    from dockercomms.cli.main import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for code, meaning in [(2, "verification"), (3, "auth"), (4, "protocol"), (5, "not found")]:
        assert f"{code} " in text and meaning in text


def test_the_demo_seals_verifies_and_receives(tmp_path: Path) -> None:
    party = newcomer(tmp_path)
    steps = json.loads(party.ok("demo", "--json"))
    assert any(step.startswith("alice sealed hello.txt to bob") for step in steps), steps
    assert any("opened the sealed message" in step for step in steps), steps


def test_init_takes_a_storage_config_and_publishes_its_card_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "storage-root"
    (tmp_path / "config.yml").write_text(f"storage:\n  filesystem:\n    rootdirectory: {root}\n")
    party = newcomer(tmp_path)
    party.ok(
        "init",
        "--identity",
        "dana",
        "--repo",
        "storage:team/comms",
        "--storage-config",
        "config.yml",
    )
    assert settings_of(party)["storage_config"] == str(tmp_path / "config.yml")
    tags = root / "docker/registry/v2/repositories/team/comms/_manifests/tags"
    assert [t.name for t in tags.iterdir() if t.name.startswith("card-")]
