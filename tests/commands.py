"""The shell commands a page tells a user to type, and whether each still parses as the command itself parses it.

A command is found in a ```bash block (every line; a trailing backslash continues it) or in an inline code span
that begins like one of ours (`.venv/bin/python ...`, `python -m ...`, `./setup.sh ...`, `local.py ...`,
`prefect ...`). It is split as a shell splits it (quotes, comments, `&&`, `;`, `|`, `&`, a for loop's body),
leading variable assignments and `env -u NAME` are dropped, and what is left is parsed -- not run -- by the
program's own parser:

    python -m <ours> / deployments/<script>.py   the module's parse_args(argv), else build_parser().parse_args(argv)
    prefect ...                                   Prefect's own command-line parser (cyclopts), no command run
    ./setup.sh ...                                the grammar its usage line declares, the one it enforces

A placeholder (`<id>`, `...`) stands for a value: a UUID-shaped one, which every parameter here takes. A usage
synopsis (`[--backend auto|neuron]`) is checked option by option. In an inline span, `a|b` is two alternatives.
Programs that are not this project's (curl, git, systemctl, ruff ...) are listed in OTHERS and not parsed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tasks.common.config import REPO_ROOT

PAGES = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "deployments" / "README.md")
PLACEHOLDER = "00000000-0000-0000-0000-000000000000"  # a str, a path, a name and a UUID all take it
# Not this project's commands: the shell's and the system's, and tools pip installs (their flags are theirs).
OTHERS = {
    "apt-get", "cd", "chmod", "cp", "curl", "done", "echo", "export", "for", "git", "ls", "mkdir", "pg_dump",
    "read", "rm", "sudo", "systemctl", "time", "journalctl", "tail", "du", "find", "crontab", "test", "cat",
    "kill", "ps",
}  # fmt: skip
THIRD_PARTY_MODULES = {"pytest", "pip"}
VENV_TOOLS = {"ruff", "mypy", "pytest", "pip"}  # .venv/bin/<tool>: must be installed, flags are the tool's own
ALIASES = {"flows.validate": "flows.cli"}  # the module whose parser a `python -m` command uses
INLINE_START = re.compile(
    r"^(?:[A-Z_]+=\S+ )*"
    r"(?:\.venv/bin/|/opt/\S+/\.venv/bin/|python3? -m |\./setup\.sh|deployments/\w+\.py|local\.py |prefect )"
)


@dataclass(frozen=True)
class Command:
    page: str  # where it is written: docs/runbook.md:42
    text: str  # as written
    argv: tuple[str, ...]
    inline: bool = False


def _joined(block: str) -> list[tuple[int, str]]:
    """(offset of the line in the block, the line) with backslash continuations joined."""
    lines, current, start = [], "", 0
    for number, line in enumerate(block.splitlines()):
        if not current:
            start = number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append((start, current + line))
        current = ""
    return lines


def _split(text: str, inline: bool) -> list[list[str]]:
    """Simple commands of a shell line: control operators split it; a for loop's `do` starts one. A placeholder
    (`<schedule id>`, spaces and all) is one word, a value."""
    text = re.sub(r"<[^\s<>][^<>\n]*>", PLACEHOLDER, text)
    # In an inline span `|` joins alternatives (`pause|delete`), never a pipe.
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&" if inline else ";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#" if not inline else ""
    commands: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    simple = []
    for words in commands:
        while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in ("do", "then")):
            words = words[1:]
        if words[:2] == ["env", "-u"]:
            words = words[3:]
        if words:
            simple.append(words)
    return simple


def _alternatives(words: list[str]) -> list[list[str]]:
    """An inline span's `pause|delete`: one command per alternative."""
    for index, word in enumerate(words):
        if "|" in word and not word.startswith("-"):
            return [
                alt
                for choice in word.split("|")
                for alt in _alternatives([*words[:index], choice, *words[index + 1 :]])
            ]
    return [words]


def commands(page: Path) -> list[Command]:
    text = page.read_text()
    name = str(page.relative_to(REPO_ROOT)) if page.is_relative_to(REPO_ROOT) else page.name
    found: list[Command] = []
    for block in re.finditer(r"^```(?:bash|sh|console)\n(.*?)^```", text, re.S | re.M):
        first = text[: block.start()].count("\n") + 2
        for offset, line in _joined(block.group(1)):
            # A usage synopsis ([--backend auto|neuron]) has no pipes: split it as an inline span.
            for words in _split(line, inline="[--" in line):
                found.append(Command(f"{name}:{first + offset}", line.strip(), tuple(words)))
    for span in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", text):
        if not INLINE_START.match(span.group(1)):
            continue
        number = text[: span.start()].count("\n") + 1
        for words in _split(span.group(1), inline=True):
            for alternative in _alternatives(words):
                found.append(Command(f"{name}:{number}", span.group(1), tuple(alternative), inline=True))
    return found


def _filled(words: list[str]) -> list[str]:
    out = []
    for word in words:
        word = re.sub(r"\$\{?[A-Za-z_]+\}?", "x", word)  # $pool, $PWD
        out.append(PLACEHOLDER if word == "..." else word)
    return out


def _synopsis(words: list[str]) -> bool:
    return any(word.startswith("[") for word in words)


def _argparse(module_name: str, argv: list[str], synopsis: bool) -> str | None:
    """None when the module's own parser takes argv (or, for a synopsis, knows each --option); else why not."""
    module = importlib.import_module(ALIASES.get(module_name, module_name))
    return _with_parser(module, argv, synopsis)


def _with_parser(module, argv: list[str], synopsis: bool) -> str | None:
    if synopsis:
        parser = module.build_parser()
        known = {option for action in parser._actions for option in action.option_strings}
        unknown = [
            w.strip("[]") for w in argv if w.strip("[").startswith("--") and w.strip("[]").split("=")[0] not in known
        ]
        return f"unknown options {unknown}" if unknown else None
    parse = getattr(module, "parse_args", None) or (lambda args: module.build_parser().parse_args(args))
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit as exit:
        if exit.code not in (0, None):
            return said.getvalue().strip().splitlines()[-1] if said.getvalue().strip() else f"exit {exit.code}"
    return None


def _script(path: str):
    from tests.scripts import deployments_script

    return deployments_script(Path(path).stem)


def _prefect(argv: list[str]) -> str | None:
    from prefect.cli._app import _app

    tokens = [word for word in argv if word not in ("--no-prompt", "--prompt")]
    try:
        _app.parse_args(tokens, exit_on_error=False, print_error=False)
    except Exception as error:  # cyclopts' UnknownOptionError, UnknownCommandError, MissingArgumentError ...
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def _setup_sh(argv: list[str]) -> str | None:
    """setup.sh's flags against its usage line, `usage: ./setup.sh [--a | --b] [--c] ...`: each bracket is one
    choice at most."""
    usage = re.search(r"usage: \./setup\.sh (.*?)\"", (REPO_ROOT / "setup.sh").read_text())
    assert usage, "setup.sh has no usage line"
    groups = [set(re.findall(r"--[\w-]+", group)) for group in re.findall(r"\[([^\]]+)\]", usage.group(1))]
    for flag in argv:
        if not any(flag in group for group in groups):
            return f"setup.sh has no flag {flag} (usage: {usage.group(1)})"
    for group in groups:
        if len(group & set(argv)) > 1:
            return f"setup.sh takes one of {sorted(group)}, not {sorted(group & set(argv))}"
    return None


def problem(command: Command) -> str | None:
    """None when the command parses (or is not this project's); else what is wrong with it."""
    words = _filled(list(command.argv))
    program, args = words[0], words[1:]
    synopsis = _synopsis(args)
    base = Path(program).name
    if base in OTHERS or program in OTHERS:
        return None
    if base in ("python", "python3"):
        if args[:1] == ["-m"]:
            module = args[1]
            return None if module in THIRD_PARTY_MODULES else _argparse(module, args[2:], synopsis)
        if args and args[0].startswith("deployments/"):
            return _with_parser(_script(args[0]), args[1:], synopsis)
        return f"a python command that is not `-m <module>` or a deployments/ script: {command.text}"
    if program.startswith("deployments/") or program == "local.py":
        return _with_parser(_script("deployments/local.py" if program == "local.py" else program), args, synopsis)
    if base == "prefect":
        return _prefect(args)
    if program == "./setup.sh":
        return _setup_sh(args)
    if program.startswith(".venv/bin/") and base in VENV_TOOLS:
        return None if (REPO_ROOT / program).exists() else f"{program} is not installed by ./setup.sh --tests"
    return f"not a command this project knows how to check: {program!r} (add it to tests/commands.py)"
