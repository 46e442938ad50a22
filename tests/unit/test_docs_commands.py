"""Every shell command README.md, docs/ and deployments/README.md tell a user to type still parses as the command
itself parses it (tests/commands.py: argparse through the modules' own parsers, Prefect's own CLI parser, setup.sh's
usage), and the systemd units run commands that exist and parse. Nothing is run: a night's command is parsed, not
started."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.common.config import REPO_ROOT
from tests import commands

ALL = [command for page in commands.PAGES for command in commands.commands(page)]


def test_the_pages_name_commands_of_every_kind_this_checks():
    """A guard for the extraction itself: if it found nothing, nothing would fail."""
    programs = {Path(c.argv[0]).name for c in ALL} | {
        c.argv[1] for c in ALL if len(c.argv) > 1 and c.argv[0].endswith("python")
    }
    assert {"python", "prefect", "setup.sh"} <= programs and "-m" in programs and "deployments/local.py" in programs
    assert len(ALL) > 100


def test_every_command_in_the_docs_parses():
    broken = [f"{c.page}: `{c.text}`: {why}" for c in ALL if (why := commands.problem(c))]
    assert broken == [], "\n".join(broken)


@pytest.mark.parametrize(
    "written, wrong",
    [
        (".venv/bin/python -m flows.validate --batch-sise 4", "--batch-sise"),
        (".venv/bin/python deployments/local.py up --wokers 2", "--wokers"),
        (".venv/bin/prefect worker start --pool bert-validation-cpu --limitt 1", "--limitt"),
        ("./setup.sh --neuron --transformers4", "one of"),
        (".venv/bin/python -m tools.prune --keep 3", "--keep"),
        (".venv/bin/python -m flows.doctor [--backend cpu] [--outdir DIR]", "--outdir"),
    ],
)
def test_a_misspelt_flag_fails_the_check(tmp_path, written, wrong):
    page = tmp_path / "page.md"
    page.write_text(f"Run:\n\n```bash\n{written}   # a comment\n```\n\nor inline: `{written}`.\n")
    found = commands.commands(page)
    assert len(found) == 2
    for command in found:
        assert wrong in (commands.problem(command) or ""), command


UNITS = sorted((REPO_ROOT / "deployments" / "systemd").glob("*.service"))


def _installed(unit: Path, folder: Path) -> Path:
    """The unit as it would be installed for this checkout: its /opt path made this checkout's; a template as
    one of its instances."""
    text = unit.read_text().replace("/opt/bert-serving-validation", str(REPO_ROOT))
    name = unit.name.replace("@.service", "@cpu.service")
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_each_systemd_unit_runs_commands_that_exist_and_parse(unit, tmp_path):
    installed = _installed(unit, tmp_path)
    lines = [
        line.split("=", 1)[1]
        for line in installed.read_text().splitlines()
        if line.startswith(("ExecStart=", "ExecStop="))
    ]
    assert lines
    for line in lines:
        words = line.replace("%i", "cpu").replace("%H", "host").split()
        assert Path(words[0]).is_file(), words[0]
        relative = [str(Path(words[0]).relative_to(REPO_ROOT)), *words[1:]]
        command = commands.Command(unit.name, line, tuple(relative))
        assert commands.problem(command) is None, commands.problem(command)
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(
            ["systemd-analyze", "verify", str(installed)], capture_output=True, text=True, timeout=60
        )
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), a hyphen
    per space."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_between_the_pages_resolves_to_a_file_and_a_heading():
    broken = []
    for page in [*commands.PAGES, REPO_ROOT / "tests" / "stand_ins" / "README.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}: no such file")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(), flags=re.S), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.relative_to(REPO_ROOT)}: {target}: no heading #{anchor}")
    assert broken == [], "\n".join(broken)
