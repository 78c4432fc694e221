"""The documentation cannot rot: every command it shows runs, and the reference pages say what the
code does.

- Every fenced block in README.md and docs/ is tagged. `bash` blocks are commands, and every line of
  them is run here on the demo data (`python` blocks are run too); `text` blocks are not run: they
  hold placeholders (`/data/dalle3`, `ADDR`), installs, or need what the tests do not start (a Ray
  cluster, a trainer checkout). A `bash` line this file cannot run fails the test: tag it `text`.
- Each page runs in a workspace of its own, a copy of the demo its commands are written for
  (`demo/data` indexed into `demo/indexer.sqlite`, `demo/shards` into `demo/shards.sqlite`); the
  README runs from an empty folder, its first command building the demo as a reader's does.
- Remote roots are served on 127.0.0.1 by the stand-ins tests/servers.py starts, from two small
  demo shards: `s3://my-bucket/dalle3` by moto's S3 server, `hf://datasets/my-org/dalle3` by the Hub
  stand-in, and `demo/urls.txt` lists their URLs on the Range server. `--engine ray` starts a
  local Ray instance (loopback only) in a process of its own (so do `hf://` roots: huggingface_hub
  takes HF_ENDPOINT when first imported), as `indexer watch` runs in one, stopped with Ctrl-C once
  it has caught up.
- The CLI reference lists every option of every command, the exit-code page every exit code, and
  the generated parts of the pages (cog's blocks) and the performance chart are current.
"""

from __future__ import annotations

import glob
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from servers import hub_server, range_server, s3_server

from indexer import errors

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))
import docs_reference  # noqa: E402  (scripts/ is not a package)
import perf_chart  # noqa: E402

PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
RUN_TAGS = {"bash", "python"}
SHOWN_TAGS = {"text", "json", "toml"}
COG_OUTPUT = re.compile(r"\]\]\] -->\n(.*?)<!-- \[\[\[end\]\]\] -->", re.S)
INDEXER = str(Path(sys.executable).with_name("indexer"))
SETUP = "python3 -m venv .venv && .venv/bin/pip install -q -e . && "
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
                ".venv/bin/python -m pytest -q")
REMOTE = ("s3://", "hf://", "--shard-list")
BUCKET, HUB_REPO = "my-bucket", "my-org/dalle3"


def blocks(page: Path) -> list[tuple[str, str]]:
    """(tag, text) of every fenced block of the page, in order."""
    return [(m[1], m[2]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def command_lines(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# ---- the demo workspaces and the remote stand-ins ---------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory, gen) -> Path:
    """The demo's files a page's commands start from: demo/data and demo/shards (smaller than
    the README's, the same kind)."""
    folder = tmp_path_factory.mktemp("demo-template")
    gen.make_dataset(folder / "demo" / "data", 300, seed=1)
    gen.make_shards(folder / "demo" / "shards", 200, 4, seed=2)
    return folder


def demo_workspace(template: Path, workspace: Path) -> None:
    """A copy of the demo's files, each folder indexed there (a database records its root's
    absolute path and its files' inodes: it is made where it is used, never copied)."""
    from indexer.ingest.index import index_root

    shutil.copytree(template, workspace, symlinks=True)
    index_root(workspace / "demo" / "indexer.sqlite", workspace / "demo" / "data", workers=1)
    index_root(workspace / "demo" / "shards.sqlite", workspace / "demo" / "shards", workers=1)


@pytest.fixture(scope="module")
def stand_ins(gen, tmp_path_factory) -> Iterator[Callable[[], dict[str, str]]]:
    """start() -> the settings pointing each client at the bucket, Hub dataset and https shards
    the remote examples name, served on 127.0.0.1 (demo shards of their own, small: a remote walk
    is a round trip a member); started on first use."""
    started: dict[str, str] = {}
    with ExitStack() as stack:
        def start() -> dict[str, str]:
            if not started:
                hub_repo = tmp_path_factory.mktemp("hub")
                gen.make_shards(hub_repo / "data", 40, 2, seed=3)
                started.update(_serve(hub_repo, stack))
            return started

        yield start


def _serve(hub_repo: Path, stack: ExitStack) -> dict[str, str]:
    import s3fs

    shards = sorted((hub_repo / "data").glob("*.tar"))
    endpoint = stack.enter_context(s3_server())
    hub, _seen = stack.enter_context(hub_server(HUB_REPO, hub_repo))
    base, _faults = stack.enter_context(range_server(hub_repo / "data"))
    settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "HF_ENDPOINT": hub, "HF_HUB_DISABLE_TELEMETRY": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        if not fs.exists(BUCKET):  # moto keeps its buckets in the process, across servers
            fs.mkdir(BUCKET)
        for shard in shards:
            fs.pipe(f"{BUCKET}/dalle3/{shard.name}", shard.read_bytes())
    return {**settings, "urls": "".join(f"{base}/{shard.name}\n" for shard in shards)}


@contextmanager
def remote_settings(settings: dict[str, str], workspace: Path, monkeypatch) -> Iterator[None]:
    """This page's clients pointed at the stand-ins, and demo/urls.txt listing the https shards."""
    from indexer.ingest import remote

    for name, value in settings.items():
        if name != "urls":
            monkeypatch.setenv(name, value)
    (workspace / "demo").mkdir(exist_ok=True)
    (workspace / "demo" / "urls.txt").write_text(settings["urls"])
    remote._FILESYSTEMS.clear()  # clients made with other settings
    try:
        yield
    finally:
        remote._FILESYSTEMS.clear()


# ---- running one command as a reader would ------------------------------------------------------


def expand(args: list[str], cwd: Path) -> list[str]:
    """Glob patterns expanded against cwd, as the shell does."""
    out: list[str] = []
    for arg in args:
        matches = sorted(glob.glob(arg, root_dir=cwd)) if any(c in arg for c in "*?[") else []
        out.extend(matches or [arg])
    return out


def in_process(group: click.Command, args: list[str], what: str) -> None:
    result = CliRunner().invoke(group, args, catch_exceptions=False)
    assert result.exit_code == 0, f"{what}\nexit {result.exit_code}\n{result.output}\n{result.stderr}"


def until_caught_up(args: list[str], cwd: Path, what: str) -> None:
    """`indexer watch`: started in a process of its own, stopped with Ctrl-C once it has printed
    its first line (the catch-up scan), which must end it with exit 0."""
    proc = subprocess.Popen([INDEXER, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first and first[0].strip(), f"{what}: printed nothing before Ctrl-C\n{err}"
    assert proc.returncode == 0, f"{what}\nexit {proc.returncode}\n{first[0]}{out}\n{err}"


def is_ray(argv: list[str]) -> bool:
    return "--engine" in argv and argv[argv.index("--engine") + 1] == "ray"


def run_command(line: str, cwd: Path) -> None:
    """One command of a `bash` block, run from cwd; it must exit 0."""
    argv = expand(shlex.split(line, comments=True), cwd)
    what = f"in {cwd}: {line}"
    if argv[0] == "indexer" and argv[1] == "watch":
        until_caught_up(argv[1:], cwd, what)
    elif argv[0] == "indexer" and (is_ray(argv) or any(arg.startswith("hf://") for arg in argv)):
        # a process of its own: Ray's instance stays up in the process that started it, and
        # huggingface_hub reads HF_ENDPOINT once, when first imported (the next test's stand-in
        # would get this one's address)
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        ray = is_ray(argv) and "--json" not in argv  # its summary names the nodes the tasks ran on
        done = subprocess.run([INDEXER, *argv[1:], *(["--json"] if ray else [])], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{what}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        if ray:  # Ray kept to loopback: every task ran on a node at 127.0.0.1
            nodes = json.loads(done.stdout)["tasks_by_node"]
            assert nodes and set(nodes) == {"127.0.0.1"}, f"{what}: tasks ran on {nodes}"
    elif argv[0] == "indexer":
        from indexer.cli import main

        in_process(main, argv[1:], what)
    elif argv[0] == "mkdir" and argv[1] == "-p":
        for folder in argv[2:]:
            (cwd / folder).mkdir(parents=True, exist_ok=True)
    elif argv[0] == "sqlite-utils":
        from sqlite_utils.cli import cli

        in_process(cli, argv[1:], what)
    elif argv[0] == "python" and argv[1] == "scripts/make_sample.py":
        with pytest.MonkeyPatch.context() as patch:  # in this process: its imports are paid already
            patch.setattr(sys, "argv", argv[1:])
            runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
    else:
        pytest.fail(f"{what}: not a command the docs test runs (indexer, sqlite-utils, mkdir -p, "
                    "python scripts/make_sample.py);"
                    " tag the block `text` if it is not meant to be run as it is")


def run_block(tag: str, text: str, cwd: Path, page: str) -> None:
    if tag == "python":
        exec(compile(text, page, "exec"), {"__name__": "__docs__"})  # cwd is the workspace
        return
    for line in command_lines(text):
        run_command(line, cwd)


def readme_setup(text: str) -> str:
    """The README's first block without its install step (this suite runs in the installed venv):
    the rest, with the venv's programs as a reader's PATH would find them after installing."""
    assert text.startswith(SETUP), "the README's first command must start by installing the package"
    return "\n".join(step.replace(".venv/bin/", "") for step in text[len(SETUP):].strip().split(" && "))


# ---- the tests ----------------------------------------------------------------------------------


def test_every_block_is_tagged_run_or_shown() -> None:
    for page in PAGES:
        for tag, text in blocks(page):
            assert tag in RUN_TAGS | SHOWN_TAGS, f"{page_id(page)}: a ```{tag} block: tag it bash, python " \
                                                 f"(run by this test) or text (shown only):\n{text}"


def test_the_readme_opens_with_the_demo_and_the_test_command() -> None:
    first, second = (text.strip() for _tag, text in blocks(ROOT / "README.md")[:2])
    assert first.startswith(SETUP) and "scripts/make_sample.py demo/data" in first
    assert second == TEST_COMMAND and TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


@pytest.mark.usefixtures("no_racy")
@pytest.mark.parametrize("page", [p for p in PAGES if any(t in RUN_TAGS for t, _ in blocks(p))], ids=page_id)
def test_every_command_on_the_page_runs(page: Path, template: Path, stand_ins, tmp_path: Path,
                                        monkeypatch) -> None:
    workspace = tmp_path / "workspace"
    runnable = [(tag, text) for tag, text in blocks(page) if tag in RUN_TAGS]
    if page.name == "README.md":
        workspace.mkdir()
        runnable = [("bash", readme_setup(runnable[0][1])), *[b for b in runnable[1:] if b[1].strip() !=
                                                              TEST_COMMAND]]
    else:
        demo_workspace(template, workspace)
    monkeypatch.chdir(workspace)
    with ExitStack() as stack:
        served = False
        for tag, text in runnable:
            if not served and any(marker in text for marker in REMOTE):  # started when first named
                stack.enter_context(remote_settings(stand_ins(), workspace, monkeypatch))
                served = True
            run_block(tag, text, workspace, page_id(page))


def cog_output(page: Path, number: int = 0) -> str:
    return COG_OUTPUT.findall(page.read_text(encoding="utf-8"))[number]


def test_the_generated_parts_of_the_pages_are_current() -> None:
    """What `cog --check` checks in CI, here too so a test run says it first."""
    assert cog_output(DOCS / "reference" / "cli.md") == docs_reference.cli_reference()
    assert cog_output(DOCS / "reference" / "exit-codes.md") == docs_reference.exit_code_table()
    assert cog_output(DOCS / "reference" / "schema.md") == docs_reference.schema_columns()
    assert cog_output(DOCS / "changelog.md") == docs_reference.changelog()
    assert cog_output(DOCS / "internals" / "performance.md") == perf_chart.table()
    assert (DOCS / "perf" / "chart.svg").read_text() == perf_chart.svg(perf_chart.load())


def cli_sections() -> dict[str, str]:
    """The CLI reference page cut at its headings: `indexer export parquet` -> its text."""
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} (indexer[^\n]*)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_option_of_every_command_is_in_the_cli_reference() -> None:
    sections = cli_sections()
    missing = []
    for path, command in docs_reference.commands():
        name = " ".join(("indexer", *path))
        section = sections.get(name, "")
        assert section, f"{name} has no section in docs/reference/cli.md"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                missing += [f"{name} {opt}" for opt in (*param.opts, *param.secondary_opts)
                            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", section)]
    assert not missing, "not in docs/reference/cli.md (run `cog -r -I scripts docs/reference/cli.md`): " \
                        + ", ".join(missing)


def test_every_exit_code_is_on_the_exit_codes_page() -> None:
    page = (DOCS / "reference" / "exit-codes.md").read_text(encoding="utf-8")
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert codes == {code for code, _name, _meaning in docs_reference.exit_codes()}
    assert all(re.search(rf"^\| {code} \| `EXIT_\w+` \| \S", page, re.M) for code in codes), page
    assert all(meaning for _code, _name, meaning in docs_reference.exit_codes()), "a code has no comment"
