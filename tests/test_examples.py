"""Every example of the documentation (docs/*.md) and of the README runs as written, so none can rot.

A fenced block is run unless the line above it is `<!-- check only: REASON -->` (it needs a GPU, a
download, several machines or minutes): `python` blocks run in one namespace per page, in order, and
`bash` blocks with `bash -e`, each page in a fresh folder holding a link to `recipes/`. A check-only block
is compiled (Python) or parsed by `bash -n`, and every `pccore` and `torchrun` command in it is parsed by
that command's own argument parser, with every recipe it names present. `<!-- file: NAME -->` saves a
block as NAME in the page's folder for the blocks after it. `toml` blocks are parsed; `text` blocks are
output or usage. docs/development.md describes these rules to the writer of a page.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [README]
LANGUAGES = {"python", "bash", "toml", "text"}
MARKER = re.compile(r"^<!-- (check only|file): (.+?) -->$")
FENCE = re.compile(r"^```(\S*)\s*$")
BASH_TIMEOUT = 180


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    check_only: str | None = None  # the reason it is not run
    file: str | None = None  # the name it is saved as

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker on the line above each."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{i + 1}: a code block that is never closed"
        marker = MARKER.match(lines[i - 1]) if i else None
        kind, value = marker.groups() if marker else (None, None)
        found.append(Block(page, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                           check_only=value if kind == "check only" else None,
                           file=value if kind == "file" else None))
        i = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- the pages are well formed --------------------------------------------------------------------


def test_the_pages_have_examples_of_each_kind():
    counts = {(b.language, b.check_only is None) for b in ALL}
    assert {("python", True), ("bash", True), ("python", False), ("bash", False), ("toml", True)} <= counts
    assert len(ALL) > 40


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_block_names_its_language_and_every_marker_stands_above_a_block(page):
    for block in blocks(page):
        assert block.language in LANGUAGES, f"{block.where}: language {block.language!r}, not one of {LANGUAGES}"
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if line.startswith("<!--") and ("check only" in line or "file:" in line):
            assert MARKER.match(line), f"{page.name}:{number}: a malformed marker {line!r}"
            assert number < len(lines) and FENCE.match(lines[number]), (
                f"{page.name}:{number}: a marker must stand on the line right above a code block")


def test_the_blocks_run_are_the_ones_that_are_not_marked():
    """The marker reads as the reason; a block marked without one would silently skip its run."""
    for block in ALL:
        if block.check_only is not None:
            assert len(block.check_only.split()) >= 2, f"{block.where}: say why it is only checked"
            assert block.language in ("python", "bash"), f"{block.where}: only code is run or checked"


# --- checked only ---------------------------------------------------------------------------------


def _commands(text: str) -> list[list[str]]:
    """The shell commands of a block, continuation lines joined and `&&` chains split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[:cut]:
                commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def _check_command(words: list[str], where: str) -> None:
    """A pccore or torchrun command parses with its own parser and names recipes that exist."""
    from pccore.cli import build_parser

    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        launched = get_args_parser().parse_args(words[1:])
        assert launched.module and launched.training_script == "pccore", f"{where}: {shlex.join(words)}"
        words = ["pccore", *launched.training_script_args]
    if words[0] == "pccore":
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as exit:  # argparse has printed why
            raise AssertionError(f"{where}: `{shlex.join(words)}` does not parse") from exit
    for word in words:
        if word.startswith("recipes/") and word.endswith(".toml"):
            assert (ROOT / word).is_file(), f"{where}: {word} does not exist"


CHECKED = [b for b in ALL if b.check_only is not None]


@pytest.mark.parametrize("block", CHECKED, ids=lambda b: b.where)
def test_each_example_not_run_is_valid(block):
    if block.language == "python":
        compile(block.text, block.where, "exec")
        return
    result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert result.returncode == 0, f"{block.where}: {result.stderr}"
    for words in _commands(block.text):
        _check_command(words, block.where)


def test_the_command_check_fails_on_a_wrong_option_or_recipe():
    with pytest.raises(AssertionError, match="does not parse"):
        _check_command(["pccore", "run", "recipes/quickstart.toml", "--nprocs", "2"], "here")
    with pytest.raises(AssertionError, match="recipes/nowhere.toml does not exist"):
        _check_command(["pccore", "run", "recipes/nowhere.toml"], "here")
    with pytest.raises(SystemExit):
        _check_command(["torchrun", "--nproc-per-node", "-m", "pccore"], "here")


@pytest.mark.parametrize("block", [b for b in ALL if b.language == "toml"], ids=lambda b: b.where)
def test_each_toml_example_parses(block):
    tomllib.loads(block.text)


# --- run ------------------------------------------------------------------------------------------

RUN_PAGES = sorted({b.page for b in ALL if b.check_only is None and b.language in ("python", "bash")})


def _run_bash(block: Block, folder: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(["bash", "-e", "-o", "pipefail"], input=block.text, cwd=folder, env=env,
                            capture_output=True, text=True, timeout=BASH_TIMEOUT)
    assert result.returncode == 0, (
        f"{block.where} failed with status {result.returncode}:\n{block.text}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")


@pytest.mark.parametrize("page", RUN_PAGES, ids=_page_id)
def test_the_examples_of_each_page_run(page, tmp_path, monkeypatch, one_thread, capsys):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = set(sys.modules)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    try:
        for block in blocks(page):
            if block.file is not None:
                (tmp_path / block.file).write_text(block.text)
            if block.check_only is not None or block.file is not None:
                continue
            if block.language == "python":
                exec(compile(block.text, block.where, "exec"), namespace)
                ran += 1
            elif block.language == "bash":
                _run_bash(block, tmp_path)
                ran += 1
    finally:
        for name in set(sys.modules) - modules:  # a page's own modules (pccore_flat) do not outlive it
            if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
                del sys.modules[name]
    assert ran > 0


def test_a_failing_shell_example_fails_the_test(tmp_path):
    block = Block(ROOT / "docs" / "index.md", 1, "bash", "pccore recipe check recipes/nowhere.toml\n")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    with pytest.raises(AssertionError, match="failed with status 2"):
        _run_bash(block, tmp_path)


# --- paths and the README ---------------------------------------------------------------------------

REPO_PATH = re.compile(r"`((?:recipes|benchmarks|examples|docs|tests|pccore|plugins)/[\w./-]+)`")


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_file_of_the_repository_a_page_names_exists(page):
    for path in REPO_PATH.findall(page.read_text()):
        if "<" not in path:
            assert (ROOT / path).exists(), f"{page.relative_to(ROOT)} names {path}, which does not exist"


def test_the_readme_is_short_and_links_into_the_site():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(set(links)) >= 8
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_ci_runs_the_readmes_test_command_verbatim():
    command = 'pip install ".[test]" ./examples/pccore-example-schedule && python -m pytest'
    readme = [b.text.strip() for b in blocks(README) if b.language == "bash"]
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


# --- the version and the changelog ----------------------------------------------------------------


def test_the_changelogs_latest_release_is_the_version():
    from pccore.core.version import __version__

    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert releases and releases[0] == __version__
    assert releases == sorted(releases, key=lambda v: tuple(map(int, v.split("."))), reverse=True)


def test_the_version_is_written_in_one_place():
    """pyproject reads it from pccore/core/version.py; no other file states a version of pccore."""
    from pccore.core.version import __version__

    assert 'version = { attr = "pccore.core.version.__version__" }' in (ROOT / "pyproject.toml").read_text()
    for path in [*PAGES, ROOT / "pyproject.toml", *(ROOT / "pccore").rglob("*.py")]:
        if path.name == "version.py":
            continue
        text = path.read_text()
        assert f'__version__ = "{__version__}"' not in text and f"pccore {__version__}" not in text, path


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (CI runs it after installing the docs extra; here where it is installed)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "reference" / "pccore" / "index.html").is_file()
