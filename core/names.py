"""Names: the grammar of identities, recipients and trust names, and each name's folder.

Caveats first:

* The grammar is ours, not the protocol's. On the wire a name is only hashed into
  the recipient tag (SPEC 1), which takes any UTF-8. What bounds a name is that it
  is also a folder (``inbox/NAME``, ``outbox/NAME``, ``sent/NAME``), an argument
  typed in a shell and a column in listings.
* The rule: 1 to :data:`MAX_NAME_CHARS` ASCII letters, digits and ``. _ - + @``,
  starting and ending with a letter or digit. E-mail addresses (unquoted, ASCII)
  and names such as ``team-a`` or ``release-bot`` fit; ``/``, a leading ``.``,
  spaces, control characters and ``@host`` (an empty ``$USER``) do not.
* No Unicode: a composed and a decomposed "jürgen" hash to two recipients yet
  look like one folder, and look-alike letters from other scripts would let one
  sender pass for another in a listing.
* A keyless signer's certificate identity (an e-mail or a CI workflow URI) is not
  a name: a trust entry binds it to a name, and only the name follows this rule.
* Names written before the grammar (``config.toml``, ``trust.json``) are not
  refused when read, so nobody loses their inbox: callers warn with
  :func:`name_problem`, and :func:`folder_name` still gives each its own folder.
"""

from __future__ import annotations

import hashlib
import string
from typing import Final

from dockercomms.core.errors import ConfigError
from dockercomms.core.untrusted import shown

MAX_NAME_CHARS: Final = 128
#: Longest folder an old (invalid) name gets before it is cut and hashed.
_MAX_FOLDER_CHARS: Final = 200
_EDGE: Final = frozenset(string.ascii_letters + string.digits)
_ALLOWED: Final = _EDGE | frozenset("._-+@")

RULE: Final = (
    f"a name is 1-{MAX_NAME_CHARS} characters: letters, digits and . _ - + @, "
    "starting and ending with a letter or digit, e.g. alice@example.com or team-a"
)


def name_problem(text: str) -> str | None:
    """What makes ``text`` not a name, in a few words; ``None`` when it is one."""
    if not text:
        return "it is empty"
    if len(text) > MAX_NAME_CHARS:
        return f"it is {len(text)} characters long, more than {MAX_NAME_CHARS}"
    if text[0] == "@":
        return "it starts with '@' (was $USER empty in \"$USER@$(hostname)\"?)"
    if text[0] in _ALLOWED - _EDGE:
        return f"it starts with '{text[0]}'"
    for ch in text:
        if ch not in _ALLOWED:
            return f"'{shown(ch)}' is not allowed"
    if text[-1] not in _EDGE:
        return f"it ends with '{text[-1]}'"
    return None


def is_valid_name(text: str) -> bool:
    """True when ``text`` follows the grammar."""
    return name_problem(text) is None


def check_name(text: str, what: str) -> str:
    """``text`` if it is a valid name, else a :class:`ConfigError` showing a valid one.

    ``what`` says which name it is ("identity", "recipient", "--to") so the message
    points at the argument to fix.
    """
    problem = name_problem(text)
    if problem is not None:
        raise ConfigError(f"{what} '{shown(text)}' is not a valid name: {problem}; {RULE}")
    return text


def folder_name(name: str) -> str:
    """The folder for ``name``: the name itself when valid, else an escaped form.

    The mapping is injective, so two names never share a folder, and an escaped
    form is never a valid name, so an old name such as ``team/x`` cannot take
    ``team_x``'s folder. Escaping is percent-encoding of every character outside
    the grammar's alphabet (``%`` itself included) and of a leading ``.``; an empty
    name is ``%``; a very long one is cut and gets a hash of the whole. The result
    is always one safe ASCII path component that is neither hidden nor reserved.
    """
    if is_valid_name(name):
        return name
    escaped = "".join(ch if ch in _ALLOWED else _percent(ch) for ch in name)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    if len(escaped) > _MAX_FOLDER_CHARS:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        escaped = f"{escaped[:_MAX_FOLDER_CHARS]}%{digest}"
    return escaped or "%"


def _percent(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))
