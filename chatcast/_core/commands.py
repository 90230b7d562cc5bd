"""What a TCP client asks of the server, and what a user types; parsed sans I/O.

A text-mode line is either a slash command (``/join room``) or chat text; a JSON-mode frame is
an object with a ``"type"``. Both parse to the same small command objects, so the server has
one code path per command whatever the client's mode. ``docs/protocol.md`` is the normative
description.

The command line parses what its user types with the same :func:`parse_text`: the server,
``chatcast client``, ``chatcast multicast chat`` and the server's operator console each
understand a :class:`CommandSet`, their own subset of the one table of slash commands
(:data:`SYNTAX`), and show their ``/help`` from it (:func:`help_text`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from ..exceptions import InvalidFrame
from .wire import parse_frame

__all__ = [
    "CLIENT_COMMANDS",
    "ESCAPE",
    "HELP_TEXT",
    "MAX_DURATION",
    "MAX_HISTORY_REQUEST",
    "MAX_NAME_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_REF_LENGTH",
    "MODERATION_TYPES",
    "MULTICAST_COMMANDS",
    "OPERATOR_COMMANDS",
    "PROTOCOL_VERSION",
    "SERVER_COMMANDS",
    "SYNTAX",
    "Auth",
    "Ban",
    "Bans",
    "Command",
    "CommandSet",
    "Hello",
    "Help",
    "History",
    "Join",
    "Kick",
    "ModerationCommand",
    "Mute",
    "Nick",
    "Op",
    "Ping",
    "Pong",
    "Quit",
    "Rooms",
    "Say",
    "Syntax",
    "Topic",
    "Unban",
    "Unmute",
    "Who",
    "chat_text",
    "check_name",
    "check_text",
    "help_text",
    "name_key",
    "parse_duration",
    "parse_json",
    "parse_text",
    "ref_of",
    "split_command",
]

#: 2: message ids, history, resume and acks (docs/protocol.md, "Version 2").
PROTOCOL_VERSION: Final = 2
MAX_NAME_LENGTH: Final = 32
#: The most messages one history request may ask for.
MAX_HISTORY_REQUEST: Final = 500
#: The longest ``ref`` a client may put on a frame to have it acknowledged.
MAX_REF_LENGTH: Final = 64

# Letters, digits, "_", "." and "-": printable everywhere, safe in "name: text" displays.
_NAME = re.compile(r"[^\W][\w.\-]*")
# Reserved: the server's own voice and the default-name pattern's prefix is allowed.
_RESERVED: Final = frozenset({"server", "system", "chatcast"})
# C0 controls other than tab and LF, DEL and C1 controls are refused in chat text; so are
# the invisible characters that reorder or break what a reader sees: bidirectional overrides,
# embeddings and isolates (U+202A-U+202E, U+2066-U+2069: "Trojan Source", CVE-2021-42574),
# the line and paragraph separators (U+2028, U+2029) and the BOM (U+FEFF).
# Lone surrogates (U+D800..U+DFFF) cannot be encoded as UTF-8 at all.
_BAD_TEXT = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


@dataclass(frozen=True, slots=True)
class Hello:
    """JSON mode's opening frame: who the client wants to be, where, and its token."""

    name: str | None
    room: str | None
    token: str | None
    version: int = 1
    session: str | None = None
    """A session token from an earlier welcome: resume that session."""
    last: int | None = None
    """With ``session``: the id of the last message the client saw."""
    op: str | None = field(default=None, repr=False)  # the operator token (#14)


@dataclass(frozen=True, slots=True)
class Say:
    """Chat text to the sender's room, or privately to ``to``."""

    text: str
    to: str | None = None
    ref: str | None = None
    """The client's reference: the server acknowledges with it (``ack``) or refuses."""


@dataclass(frozen=True, slots=True)
class History:
    """Ask for a room's recent messages: the latest ``limit``, or those before/after an id."""

    room: str | None = None
    limit: int = 50
    before: int | None = None
    after: int | None = None
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Join:
    """Move to ``room``."""

    room: str


@dataclass(frozen=True, slots=True)
class Nick:
    """Change name to ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class Who:
    """List the names in ``room`` (``None``: the asker's room)."""

    room: str | None = None


@dataclass(frozen=True, slots=True)
class Rooms:
    """List the rooms and how many are in each."""


@dataclass(frozen=True, slots=True)
class Help:
    """Describe the slash commands."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave and close the connection."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Auth:
    """Present a token (text mode's ``/auth TOKEN``)."""

    token: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? (either side may ask; the answer is :class:`Pong`)."""


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to :class:`Ping`."""


# -- moderation commands (#14) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """Present the operator token (``/op TOKEN``; JSON ``{"type": "op"}``)."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Kick:
    """Disconnect ``name`` with ``reason`` (operators only)."""

    name: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ban:
    """Ban a name (``name``) or an address (``address``) for ``duration`` seconds (``None``:
    until unbanned), with ``reason`` (operators only)."""

    name: str | None = None
    address: str | None = None
    duration: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unban:
    """Lift the ban on ``name`` or ``address`` (operators only)."""

    name: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Bans:
    """List the bans (operators only)."""


@dataclass(frozen=True, slots=True)
class Mute:
    """Stop ``name`` speaking in ``room`` (``None``: the room it is in); operators only."""

    name: str
    room: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unmute:
    """Let ``name`` speak in ``room`` again (``None``: the room it is in); operators only."""

    name: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Topic:
    """Show the topic of ``room`` (``None``: mine), or set it to ``text`` (operators only;
    ``""`` clears it)."""

    room: str | None = None
    text: str | None = None


ModerationCommand = Op | Kick | Ban | Unban | Bans | Mute | Unmute | Topic
#: The moderation command types, for dispatch.
MODERATION_TYPES: Final = (Op, Kick, Ban, Unban, Bans, Mute, Unmute, Topic)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest ban: ten years (a longer one is permanent in all but name).
MAX_DURATION: Final = 10 * 365 * 86400.0


def parse_duration(word: str) -> float | None:
    """Seconds in a duration such as ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` or ``1h30m``;
    ``None`` if ``word`` is not one.

    Raises:
        InvalidFrame: A duration of 0 or over ten years.
    """
    word = word.lower()
    parts = _DURATION.findall(word)
    if not parts or "".join(n + u for n, u in parts) != word:
        return None
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds <= MAX_DURATION:
        raise InvalidFrame(f"a duration must be more than 0 and at most 10 years, got {word}")
    return seconds


def _target(word: str) -> tuple[str | None, str | None]:
    """``@ADDRESS`` names an address, anything else a name: ``(name, address)``."""
    if word.startswith("@"):
        if not word[1:]:
            raise InvalidFrame("an address after '@' is needed (/ban @10.0.0.5)")
        return None, word[1:]
    return word, None


def _parse_moderation(command: str, rest: str) -> ModerationCommand:
    """Parse the argument of a moderation slash command (``command`` is its word)."""
    first, _, tail = rest.partition(" ")
    tail = tail.strip()
    if command == "op":
        return Op(rest)
    if command == "kick":
        return Kick(first, _reason(tail))
    if command == "ban":
        name, address = _target(first)
        word, _, after = tail.partition(" ")
        duration = parse_duration(word) if word else None
        reason = after.strip() if duration is not None else tail
        return Ban(name, address, duration, _reason(reason))
    if command == "unban":
        name, address = _target(first)
        return Unban(name, address)
    if command == "bans":
        return Bans()
    if command in ("mute", "unmute"):
        # The room, when given, is marked with "#" (names never start with one), so that
        # "/mute bob too loud" is a reason, not a room called "too".
        room: str | None = None
        if tail.startswith("#") or (command == "unmute" and tail):
            room, _, tail = tail.partition(" ")
            room = room.removeprefix("#")
        if command == "unmute":
            return Unmute(first, room)
        return Mute(first, room, _reason(tail.strip()))
    # topic: "/topic" shows mine, "/topic ROOM" shows ROOM's, "/topic ROOM TEXT" sets it,
    # "/topic ROOM -" clears it.
    first = first.removeprefix("#")
    if not first:
        return Topic()
    if not tail:
        return Topic(first)
    return Topic(first, "" if tail == "-" else check_text(tail))


def _parse_moderation_json(kind: str, obj: dict[str, Any]) -> ModerationCommand | None:
    """Parse a moderation JSON frame, or ``None`` if ``kind`` is not one."""
    if kind == "op":
        return Op(_field(obj, "token", required=True))
    if kind == "kick":
        return Kick(_field(obj, "name", required=True), _reason(_field(obj, "reason") or ""))
    if kind in ("ban", "unban"):
        name, address = _field(obj, "name"), _field(obj, "address")
        if (name is None) == (address is None):
            raise InvalidFrame(f'"{kind}" needs exactly one of "name" and "address"')
        if kind == "unban":
            return Unban(name, address)
        duration = obj.get("duration")
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration <= MAX_DURATION
        ):
            raise InvalidFrame('"duration" must be seconds, more than 0 and at most 10 years')
        reason = _reason(_field(obj, "reason") or "")
        return Ban(name, address, None if duration is None else float(duration), reason)
    if kind == "bans":
        return Bans()
    if kind == "mute":
        name = _field(obj, "name", required=True)
        return Mute(name, _field(obj, "room"), _reason(_field(obj, "reason") or ""))
    if kind == "unmute":
        return Unmute(_field(obj, "name", required=True), _field(obj, "room"))
    if kind == "topic":
        text = _field(obj, "text")
        return Topic(_field(obj, "room"), text if not text else check_text(text))
    return None


# -- end of moderation commands -----------------------------------------------------------

Command = (
    Hello
    | Say
    | Join
    | Nick
    | Who
    | Rooms
    | Help
    | Quit
    | Auth
    | Ping
    | Pong
    | History
    | ModerationCommand
)


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid user or room name.

    Valid: 1 to 32 characters, letters, digits, ``_``, ``.`` and ``-``, not starting with
    ``.`` or ``-``, and not a reserved name (``server``, ``system``, ``chatcast``).

    Raises:
        InvalidFrame: With a reason a user can act on.
    """
    if not name:
        raise InvalidFrame(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidFrame(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):
        raise InvalidFrame(f"{what} may hold only letters, digits, '_', '.' and '-'")
    if len({_script(c) for c in unicodedata.normalize("NFKC", name) if c.isalpha()}) > 1:
        # "alice" spelt with a Cyrillic "a" (U+0430) would pass for "alice" (Unicode TR39,
        # mixed-script confusables): a name's letters come from one script.
        raise InvalidFrame(f"{what} mixes letters of different scripts")
    if name_key(name) in _RESERVED:
        raise InvalidFrame(f"{what} {name!r} is reserved")
    return name


def name_key(name: str) -> str:
    """The form two names are compared in: ``Alice``, ``alice`` and ``alice`` in fullwidth
    letters (U+FF41...) are one name (Unicode NFKC, then case folding)."""
    return unicodedata.normalize("NFKC", name).casefold()


# Scripts that are written together: Japanese mixes kanji and kana, Korean hangul and hanja.
_SCRIPT_GROUPS: Final = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HANGUL": "CJK"}


def _script(char: str) -> str:
    """A letter's script, as the first word of its Unicode name (``LATIN``, ``CYRILLIC``)."""
    word = unicodedata.name(char, "?").split(" ", 1)[0]
    return _SCRIPT_GROUPS.get(word, word)


#: The longest leave reason shown to a room; a longer one is cut.
MAX_REASON_LENGTH: Final = 200


def _reason(text: str) -> str:
    """A leave reason the room may see: chat-text rules, one line, at most
    :data:`MAX_REASON_LENGTH` characters. One that breaks the rules is dropped ("")."""
    text = text.strip()
    if not text or "\n" in text or _BAD_TEXT.search(text) is not None:
        return ""
    return text[:MAX_REASON_LENGTH]


def check_text(text: str) -> str:
    """Return ``text`` if it may be relayed as chat text.

    Raises:
        InvalidFrame: Empty, or holding control characters other than tab and newline
            (NUL, ESC, a lone CR, DEL, C1 controls): they could drive a reader's terminal;
            or invisible characters that reorder or break the displayed text (bidi
            overrides and isolates, U+2028/U+2029, U+FEFF).
    """
    if not text:
        raise InvalidFrame("empty message")
    bad = _BAD_TEXT.search(text)
    if bad is not None:
        char = ord(bad.group())
        if 0xD800 <= char <= 0xDFFF:
            raise InvalidFrame(f"lone surrogate U+{char:04X} is not valid text")
        if char > 0x9F:
            raise InvalidFrame(f"invisible formatting character U+{char:04X} is not allowed")
        raise InvalidFrame(f"control character U+{char:04X} is not allowed")
    return text


@dataclass(frozen=True, slots=True)
class Syntax:
    """How one slash command is written and what it does, as the help lists it."""

    usage: str
    """How it is typed: ``/msg NAME TEXT``; ``[...]`` marks an optional argument."""
    summary: str
    """What it does, in a few words."""
    needs_argument: bool = False
    """Whether the command word alone is refused."""


#: Every slash command any chatcast program understands: the one table the parser, the
#: server's ``/help`` and the command line's ``/help`` are built from.
SYNTAX: Final[Mapping[str, Syntax]] = MappingProxyType(
    {
        "nick": Syntax("/nick NAME", "change your name", needs_argument=True),
        "join": Syntax("/join ROOM", "move to another room", needs_argument=True),
        "msg": Syntax("/msg NAME TEXT", "private message to NAME", needs_argument=True),
        "who": Syntax("/who [ROOM]", "who is in your room (or ROOM)"),
        "rooms": Syntax("/rooms", "list the rooms"),
        "history": Syntax("/history [N]", "show the last N messages of your room"),
        "auth": Syntax(
            "/auth TOKEN", "log in, when the server asks for a token", needs_argument=True
        ),
        "quit": Syntax("/quit [REASON]", "leave"),
        "help": Syntax("/help", "list the commands"),
        # Moderation (#14): operators only, but /op and the showing form of /topic.
        "op": Syntax("/op TOKEN", "become an operator", needs_argument=True),
        "kick": Syntax("/kick NAME [WHY]", "disconnect NAME (operators)", needs_argument=True),
        "ban": Syntax(
            "/ban NAME|@IP [TIME] [WHY]",
            "ban for TIME (10m, 2h, 1d) or for good (operators)",
            needs_argument=True,
        ),
        "unban": Syntax("/unban NAME|@IP", "lift a ban (operators)", needs_argument=True),
        "bans": Syntax("/bans", "list the bans (operators)"),
        "mute": Syntax(
            "/mute NAME [#ROOM] [WHY]",
            "stop NAME speaking in ROOM (operators)",
            needs_argument=True,
        ),
        "unmute": Syntax(
            "/unmute NAME [#ROOM]", "let NAME speak again (operators)", needs_argument=True
        ),
        "topic": Syntax("/topic [ROOM [TEXT|-]]", "show ROOM's topic; set or clear it (operators)"),
    }
)
#: The escape for chat text that starts with ``/``, as the help lists it.
ESCAPE: Final = Syntax("//text", "send a line that starts with '/'")


@dataclass(frozen=True, slots=True)
class CommandSet:
    """The slash commands one program understands: its own subset of :data:`SYNTAX`.

    ``/help`` is understood by every set; it is listed only if in :attr:`names`.

    Raises:
        ValueError: A name or an alias's target that :data:`SYNTAX` lacks.
    """

    names: tuple[str, ...]
    """The commands, in the order the help lists them; each a key of :data:`SYNTAX`."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Other spellings, not listed: ``{"exit": "quit"}``."""
    text_rules: bool = True
    """Whether chat text must pass :func:`check_text` (the hub's rules). A multicast group
    has none of its own: its receivers sanitise whatever arrives."""
    chat_goes_to: str = "your room"
    """Where a line that is not a command goes, as the help says."""

    def __post_init__(self) -> None:
        for name in (*self.names, *self.aliases.values()):
            if name not in SYNTAX:
                raise ValueError(f"unknown command {name!r}; known: {', '.join(SYNTAX)}")

    def resolve(self, word: str) -> str | None:
        """The command ``word`` (already lower case) names here, or ``None``."""
        name = self.aliases.get(word, word)
        return name if name in self.names or name == "help" else None


# The moderation commands (#14), in the order the help lists them.
_MODERATION: Final = ("op", "kick", "ban", "unban", "bans", "mute", "unmute", "topic")
#: What a text-mode client may send the server (``docs/protocol.md``).
SERVER_COMMANDS: Final = CommandSet(
    ("nick", "join", "msg", "who", "rooms", "history", "auth", "quit", *_MODERATION)
)
#: What ``chatcast client`` understands: the server's set but ``/auth`` (the token is given
#: at start), and ``/exit`` for ``/quit``.
CLIENT_COMMANDS: Final = CommandSet(
    ("nick", "join", "msg", "who", "rooms", "history", "quit", *_MODERATION),
    aliases={"exit": "quit"},
)
#: What ``chatcast multicast chat`` understands.
MULTICAST_COMMANDS: Final = CommandSet(
    ("quit",), aliases={"exit": "quit"}, text_rules=False, chat_goes_to="the group"
)
#: What the operator of ``chatcast server`` may type: a line that is not a command is an
#: announcement (the server's own text: the hub's rules are for clients).
OPERATOR_COMMANDS: Final = CommandSet(
    ("kick", "ban", "unban", "bans", "mute", "unmute", "topic", "quit"),
    aliases={"exit": "quit"},
    text_rules=False,
    chat_goes_to="every client, as an announcement",
)


def split_command(line: str) -> tuple[str, str] | None:
    """Split a typed line into its command word and its argument.

    Returns:
        ``(word, rest)``: the word after the ``/`` in lower case, and the rest of the line
        without the blanks around it; ``None`` if the line is chat text (no leading ``/``, or
        ``//`` which escapes a leading ``/``: see :func:`chat_text`).
    """
    if not line.startswith("/") or line.startswith("//"):
        return None
    word, _, rest = line[1:].partition(" ")
    return word.lower(), rest.strip()


def chat_text(line: str) -> str:
    """The chat text a line that is not a command stands for: ``//text`` is ``/text``."""
    return line[1:] if line.startswith("//") else line


def parse_text(line: str, commands: CommandSet = SERVER_COMMANDS) -> Command:
    """Parse one typed or text-mode line: a slash command, or chat text.

    A line starting with ``/`` is a command; ``//text`` sends ``/text`` as chat. Anything else
    is chat text for the room (:class:`Say`). The command word is case-insensitive.

    Args:
        line: One line, without its terminator.
        commands: The commands understood (default: the server's, :data:`SERVER_COMMANDS`).

    Returns:
        :class:`Say` (chat, or ``/msg``), :class:`Join`, :class:`Nick`, :class:`Who`,
        :class:`Rooms`, :class:`Auth`, :class:`Quit` (its reason cut or dropped as
        :data:`MAX_REASON_LENGTH` says) or :class:`Help`: only those ``commands`` lists.

    Raises:
        InvalidFrame: A command ``commands`` does not know (``unknown command /x (try
            /help)``), one missing its argument (``/join needs an argument (try /help)``,
            ``usage: /msg NAME TEXT``), or chat text that is empty or, under the hub's rules
            (:attr:`CommandSet.text_rules`), that :func:`check_text` refuses.
    """
    split = split_command(line)
    if split is None:
        return Say(_text(chat_text(line), commands))
    word, rest = split
    command = commands.resolve(word)
    if command is None:
        raise InvalidFrame(f"unknown command /{word} (try /help)")
    if SYNTAX[command].needs_argument and not rest:
        raise InvalidFrame(f"/{command} needs an argument (try /help)")
    if command == "nick":
        return Nick(rest)
    if command == "join":
        return Join(rest)
    if command == "msg":
        to, _, text = rest.partition(" ")
        if not text.strip():
            raise InvalidFrame(f"usage: {SYNTAX['msg'].usage}")
        return Say(_text(text.strip(), commands), to=to)
    if command == "who":
        return Who(rest or None)
    if command == "rooms":
        return Rooms()
    if command == "history":
        if not rest:
            return History()
        if not rest.isdigit() or not 1 <= int(rest) <= MAX_HISTORY_REQUEST:
            raise InvalidFrame(f"usage: /history [N], N from 1 to {MAX_HISTORY_REQUEST}")
        return History(limit=int(rest))
    if command == "quit":
        return Quit(_reason(rest))
    if command == "auth":
        return Auth(rest)
    if command in _MODERATION:
        return _parse_moderation(command, rest)  # moderation (#14)
    return Help()


def _text(text: str, commands: CommandSet) -> str:
    if commands.text_rules:
        return check_text(text)
    if not text:
        raise InvalidFrame("empty message")
    return text


def help_text(commands: CommandSet = SERVER_COMMANDS) -> str:
    """The help for ``commands``: one line per command, then the escape and where chat goes.

    ``help_text()`` is :data:`HELP_TEXT`, what the server answers ``/help`` with.
    """
    rows = [SYNTAX[name] for name in commands.names] + [ESCAPE]
    # One column for the summaries: the program's longest usage and 4 blanks.
    width = max(len(row.usage) for row in rows) + 4
    return "\n".join(
        [
            "commands:",
            *(f"  {row.usage:<{width}}{row.summary}" for row in rows),
            f"anything else is sent to {commands.chat_goes_to}",
        ]
    )


def parse_json(frame: str | dict[str, Any]) -> Command:
    """Parse one JSON-mode frame (client to server).

    Raises:
        InvalidFrame: Not a JSON object, unknown ``type``, or a field of the wrong type.
    """
    obj = parse_frame(frame) if isinstance(frame, str) else frame
    kind = obj["type"]
    if kind == "message":
        return Say(
            check_text(_field(obj, "text", required=True)), to=_field(obj, "to"), ref=_ref(obj)
        )
    if kind == "history":
        limit = obj.get("limit")
        if limit is not None and (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_HISTORY_REQUEST
        ):
            raise InvalidFrame(f'"limit" must be an integer from 1 to {MAX_HISTORY_REQUEST}')
        return History(
            _field(obj, "room"),
            50 if limit is None else limit,
            _int(obj, "before"),
            _int(obj, "after"),
            _ref(obj),
        )
    if kind == "join":
        return Join(_field(obj, "room", required=True))
    if kind == "nick":
        return Nick(_field(obj, "name", required=True))
    if kind == "who":
        return Who(_field(obj, "room"))
    if kind == "rooms":
        return Rooms()
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "quit":
        return Quit(_reason(_field(obj, "reason") or ""))
    if kind == "hello":
        version = _int(obj, "version")
        return Hello(
            _field(obj, "name"),
            _field(obj, "room"),
            _field(obj, "token"),
            1 if version is None else version,
            _field(obj, "session"),
            _int(obj, "last"),
            _field(obj, "op"),  # moderation (#14)
        )
    moderation = _parse_moderation_json(kind, obj)  # moderation (#14)
    if moderation is not None:
        return moderation
    raise InvalidFrame(f"unknown frame type {kind!r}")  # "auth" too: the hello has the token


def _int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidFrame(f'"{key}" must be an integer from 0 to 2**63-1')
    return value


def ref_of(obj: dict[str, Any]) -> str | None:
    """The ``ref`` of a frame, or None (also when it is not a valid one)."""
    try:
        return _ref(obj)
    except InvalidFrame:
        return None


def _ref(obj: dict[str, Any]) -> str | None:
    ref = _field(obj, "ref")
    if ref is not None and not 0 < len(ref) <= MAX_REF_LENGTH:
        raise InvalidFrame(f'"ref" must be 1 to {MAX_REF_LENGTH} characters')
    return ref  # type: ignore[no-any-return]


def _field(obj: dict[str, Any], key: str, *, required: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidFrame(f'"{key}" is required')
        return None
    if not isinstance(value, str):
        raise InvalidFrame(f'"{key}" must be a string')
    return value


#: What the server answers ``/help`` with.
HELP_TEXT: Final = help_text(SERVER_COMMANDS)
