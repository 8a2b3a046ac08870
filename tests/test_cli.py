"""The `genstream` command run as a real process against a real server."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

import service.__main__ as genstream_command
from service.client import cli
from service.client.outdir import write_file
from service.client.terminal import LiveDisplay, PlainDisplay
from service.eventlog import event as ev
from service.paths import UnsafePath
from tests.conftest import Genstream, MakeServer
from tests.helpers import stored_files
from tests.process import server_process

TIMEOUT = 30.0
ESC = "\x1b"


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without any genstream client settings of the machine's."""
    env = {k: v for k, v in os.environ.items() if k not in (cli.URL_ENV, cli.TOKEN_ENV)}
    return {**env, **extra}


async def start_cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        env=env or cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(*args: str, env: dict[str, str] | None = None) -> Finished:
    process = await start_cli(*args, env=env)
    try:
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


async def read_lines_until(
    process: asyncio.subprocess.Process, last: Callable[[str], bool]
) -> list[str]:
    """stdout lines up to and including the first for which last(line) is true."""
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            raw = await process.stdout.readline()
            assert raw, f"stdout ended before the line expected: {lines}"
            lines.append(raw.decode().rstrip("\n"))
            if last(lines[-1]):
                return lines


async def interrupt(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(TIMEOUT):
        return await process.wait()


def tree(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes().decode()
        for path in root.rglob("*")
        if path.is_file()
    }


# -- the commands ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "new", "generate", "tail", "status"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        genstream_command.main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: genstream {command}" in capsys.readouterr().out


def test_genstream_with_no_command_prints_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        genstream_command.main([])
    assert exited.value.code == 2
    assert "usage: genstream" in capsys.readouterr().err


async def test_python_m_service_with_no_command_starts_the_server(tmp_path: Path) -> None:
    # SPEC: `python -m service` starts the server, as `genstream serve` does.
    async with server_process(tmp_path, command=()) as server:
        assert (await server.json("GET", "/healthz"))["status"] == "ok"


async def test_new_prints_the_project_id(gs: Genstream) -> None:
    done = await run_cli("new", "my app", "--url", gs.url)
    assert done.code == 0, done.stderr
    project_id = done.stdout.strip()
    project = await gs.json("GET", f"/api/projects/{project_id}")
    assert project["name"] == "my app"


async def test_generate_out_writes_exactly_the_files_the_database_holds(
    gs: Genstream, tmp_path: Path
) -> None:
    project_id = await gs.new_project()
    out = tmp_path / "out"
    done = await run_cli("generate", project_id, "a todo api", "--out", str(out), "--url", gs.url)
    assert done.code == 0, done.stderr
    written = tree(out)
    assert written == await stored_files(gs, project_id)
    assert len(written) >= 3
    # Not a terminal: plain lines, no bar, no colour; each file as it completed.
    assert ESC not in done.stdout and "\r" not in done.stdout
    lines = done.stdout.splitlines()
    assert {line.split()[1] for line in lines if line.startswith("✓ ")} == set(written)
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[1]["content"].splitlines()[0] in lines  # the chat text, whole lines


async def test_generate_exits_non_zero_when_the_generation_fails(
    make_server: MakeServer,
) -> None:
    gs = await make_server(generation={"timeout_seconds": 0.3}, offline={"tokens_per_second": 20})
    project_id = await gs.new_project()
    done = await run_cli("generate", project_id, "a todo api", "--url", gs.url)
    assert done.code == 1
    assert "failed: timeout" in done.stdout


async def test_sigint_during_generate_cancels_the_generation_on_the_server(
    make_server: MakeServer, tmp_path: Path
) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    project_id = await gs.new_project()
    out = tmp_path / "out"
    process = await start_cli(
        "generate", project_id, "a todo api", "--out", str(out), "--url", gs.url
    )
    try:
        first = await read_lines_until(process, lambda line: line.startswith("generation "))
        generation_id = first[-1].split()[1]
        # The generation is streaming text when Ctrl+C comes.
        await read_lines_until(process, lambda line: line.startswith("[ 10%]"))
        code = await interrupt(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 130
    generation = await gs.json("GET", f"/api/generations/{generation_id}")
    assert generation["status"] == "cancelled"
    assert not out.exists()  # files are written only for a completed generation


async def test_generate_pipeline_runs_that_pipeline_with_its_inputs(gs: Genstream) -> None:
    # The example package's pipeline (examples/genstream-quiz, installed by `make install`).
    project_id = await gs.new_project()
    args = ("generate", project_id, "the solar system", "--pipeline", "quiz", "--url", gs.url)
    # --input goes over --inputs; a value is JSON when it parses (2, not "2").
    done = await run_cli(*args, "--inputs", '{"questions": 3}', "--input", "questions=2")
    assert done.code == 0, done.stderr
    lines = done.stdout.splitlines()
    generation_id = next(line.split()[1] for line in lines if line.startswith("generation "))
    generation = await gs.json("GET", f"/api/generations/{generation_id}")
    assert (generation["pipeline"], generation["inputs"]) == ("quiz", {"questions": 2})
    assert generation["status"] == "completed"
    # Its own events, one line each; its chat text; its stages on the progress lines.
    questions = [e for e in await gs.events(project_id) if e["type"] == "quiz.question"]
    assert [line.split()[:2] for line in lines if line.startswith("· ")] == [
        ["·", "quiz.topic"],
        ["·", "quiz.question"],
        ["·", "quiz.question"],
    ]
    assert f"1. {questions[0]['question']}" in lines and "Answers: 1 b, 2 a." in lines
    assert "[ 90%] Writing the questions" in lines
    assert lines[-1] == "completed: 2 questions on the solar system"

    refused = await run_cli(*args, "--input", "questions=0")
    assert refused.code == 1 and "400 invalid_inputs" in refused.stderr, refused.stderr
    unknown = await run_cli(*args[:3], "--pipeline", "nope", "--url", gs.url)
    assert unknown.code == 1 and "400 unknown_pipeline" in unknown.stderr, unknown.stderr
    not_a_pair = await run_cli(*args, "--input", "questions")
    assert not_a_pair.code == 2 and "not KEY=VALUE: 'questions'" in not_a_pair.stderr
    listed = await gs.json("GET", f"/api/projects/{project_id}/messages")
    assert len(listed["messages"]) == 2  # the refused submits stored nothing


async def test_tail_json_prints_one_parseable_event_a_line(gs: Genstream) -> None:
    project_id = await gs.new_project()
    process = await start_cli("tail", project_id, "--from", "0", "--json", "--url", gs.url)
    try:
        submitted = await gs.generate(project_id)
        lines = await read_lines_until(
            process, lambda line: f'"type":"{ev.GENERATION_COMPLETED}"' in line
        )
        code = await interrupt(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    printed = [orjson.loads(line) for line in lines]
    assert printed == await gs.events(project_id)
    assert printed[-1]["generation_id"] == submitted["generation"]["id"]
    assert code == 130


async def test_status_and_token_come_from_the_environment(make_server: MakeServer) -> None:
    gs = await make_server(auth={"token": "s3cret"})
    async with gs.http.post(
        f"{gs.url}/api/projects", json={"name": "p"}, headers={"Authorization": "Bearer s3cret"}
    ) as response:
        project_id = (await response.json())["id"]
    env = cli_env(GENSTREAM_URL=gs.url, GENSTREAM_TOKEN="s3cret")
    done = await run_cli("status", project_id, "--json", env=env)
    assert done.code == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert (status["id"], status["status"], status["files"]) == (project_id, "idle", [])

    refused = await run_cli("status", project_id, env=cli_env(GENSTREAM_URL=gs.url))
    assert refused.code == 1
    assert "401 unauthorized" in refused.stderr


# -- writing files: the paths are the model's, so hostile ------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("../escape.txt", id="parent"),
        pytest.param("a/../../escape.txt", id="parent-inside"),
        pytest.param("/tmp/escape.txt", id="absolute"),
        pytest.param("..\\escape.txt", id="backslash"),
        pytest.param("C:escape.txt", id="drive"),
        pytest.param("a/\x00b", id="NUL"),
        pytest.param("a/\x1b[2Jb", id="escape-sequence"),
        pytest.param("", id="empty"),
        pytest.param("a//b", id="empty-segment"),
        pytest.param("con.txt", id="windows-device"),
        pytest.param(".git/hooks/pre-commit", id="git-hook"),
        pytest.param("a/.GIT/config", id="git-directory-upper"),
        pytest.param("evil\u202etxt.exe", id="bidi-override"),
        pytest.param("zero\u200bwidth.txt", id="zero-width"),
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("s\ud800.txt", id="lone-surrogate"),
    ],
)
def test_write_file_refuses_a_path_that_could_escape(path: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(UnsafePath):
        write_file(root, path, "pwned")
    assert list(tmp_path.rglob("*")) == [root]


def test_write_file_refuses_to_follow_a_symlink_out_of_the_directory(tmp_path: Path) -> None:
    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "file.txt").symlink_to(outside / "file.txt")
    for path in ("linked/x.txt", "file.txt"):
        with pytest.raises(UnsafePath, match="symbolic link"):
            write_file(root, path, "pwned")
    assert list(outside.iterdir()) == []


def test_write_file_writes_under_the_directory_byte_for_byte(tmp_path: Path) -> None:
    content = "line one\r\nline two\n"
    target = write_file(tmp_path, "./src/app/main.py", content)
    assert target == tmp_path.resolve() / "src" / "app" / "main.py"
    assert target.read_bytes() == content.encode()


# -- what reaches a terminal -------------------------------------------------------------


def test_plain_display_prints_whole_lines_and_no_escape_from_the_model() -> None:
    out = io.StringIO()
    display = PlainDisplay(out)
    display.chat("Hello \x1b]52;c;cGF3bmVk\x07wor")
    display.chat("ld\nsecond")
    display.progress("Generating code", 10)
    display.progress("Generating code", 15)  # too small a step for its own line
    display.finish()
    assert out.getvalue() == (
        "Hello \ufffd]52;c;cGF3bmVk\ufffdworld\nsecond\n[ 10%] Generating code\n"
    )


def test_live_display_keeps_model_text_free_of_escape_sequences() -> None:
    out = io.StringIO()
    display = LiveDisplay(out, colour=False)
    display.chat("evil \x1b[2J\x1b]0;title\x07 text\nnext")
    display.progress("Generating code", 42)
    display.note("✓ app.py  12 bytes")
    display.finish()
    shown = out.getvalue()
    for sequence in ("\x1b[2J", "\x1b]0;"):
        assert sequence not in shown
    assert "evil \ufffd[2J\ufffd]0;title\ufffd text\n" in shown
    assert " 42% Generating code" in shown
    assert shown.endswith("next\n\r\x1b[J")
