"""Issue 9, item 1: `make test` sets up what the tests need by itself; every collected test runs.

- A skipped (or xfail-marked) test fails the run, naming the test and its reason: a missing tool
  is installed by `make test`, never a reason to pass without testing.
- `make test` first runs the system tool check (devtools/ensure-tools.sh), which installs what is
  missing, says nothing when all is there, and, when it cannot install (not root), fails naming
  the command that would.
- CI (.ci/run) is `make lint && make test`, nothing else.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.support.processes import ROOT

GUARD = "tests.support.no_skips"


def run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    """pytest with the suite's skip guard on one test file of the caller's, outside the repository
    (its own empty ini, so the repository's configuration and conftest play no part)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    test_file = tmp_path / "test_sample.py"
    test_file.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", GUARD, "-p", "no:cacheprovider", str(test_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


NOT_RUN = {
    "skip-call": (
        """
        import pytest

        def test_needs_a_tool():
            pytest.skip("no frobnicator installed")
        """,
        "test_needs_a_tool",
        "no frobnicator installed",
    ),
    "skipif-mark": (
        """
        import pytest

        @pytest.mark.skipif(True, reason="needs Chromium")
        def test_in_a_browser():
            pass
        """,
        "test_in_a_browser",
        "needs Chromium",
    ),
    "module-level-skip": (
        """
        import pytest

        pytest.skip("the whole module needs a tool", allow_module_level=True)

        def test_never_collected():
            pass
        """,
        "test_sample.py",
        "the whole module needs a tool",
    ),
    "xfail-mark": (
        """
        import pytest

        @pytest.mark.xfail(reason="known broken")
        def test_known_broken():
            assert False
        """,
        "test_known_broken",
        "known broken",
    ),
}


@pytest.mark.parametrize("case", NOT_RUN.keys())
def test_a_test_that_does_not_run_fails_the_run_naming_it_and_its_reason(tmp_path, case):
    source, name, reason = NOT_RUN[case]
    result = run_pytest(tmp_path, "def test_fine():\n    pass\n" + textwrap.dedent(source))
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    lines = [line for line in output.splitlines() if line.startswith("NOT RUN")]
    assert len(lines) == 1 and name in lines[0] and reason in lines[0], output


def test_a_run_of_passing_tests_still_passes_with_the_guard(tmp_path):
    result = run_pytest(tmp_path, "def test_fine():\n    pass\n")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "NOT RUN" not in result.stdout


def test_the_suite_runs_with_the_skip_guard(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin(GUARD)


# --- make test: the system tool check -------------------------------------------------------------


def test_make_test_checks_the_system_tools_before_running_pytest():
    planned = subprocess.run(
        ["make", "--no-print-directory", "-n", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    check = [i for i, line in enumerate(planned) if "devtools/ensure-tools.sh" in line]
    tests = [i for i, line in enumerate(planned) if "-m pytest" in line]
    assert check and tests and check[0] < tests[0], planned


def ensure_tools(script: Path = ROOT / "devtools" / "ensure-tools.sh", *prefix: str, **env: str):
    return subprocess.run(
        [*prefix, "bash", str(script)],
        cwd=script.parents[1],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=1800,  # the first run on a fresh machine installs Chromium
        check=False,
    )


def test_the_tool_check_says_nothing_once_everything_is_installed():
    first = ensure_tools()
    assert first.returncode == 0, first.stdout + first.stderr
    again = ensure_tools()
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


@pytest.fixture
def public_copy():
    """The tool check copied where any user can read it: the clone may sit under root's home."""
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)  # noqa: S103 - another user runs the copy
        script = Path(top) / "devtools" / "ensure-tools.sh"
        script.parent.mkdir(mode=0o755)
        shutil.copy(ROOT / "devtools" / "ensure-tools.sh", script)
        script.chmod(0o755)
        yield script


def test_the_tool_check_fails_naming_the_install_command_when_it_cannot_install(public_copy):
    # Not root: apt-get cannot install, so the check must stop and say what would.
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    chromium = public_copy.parent / "no-chromium"
    result = ensure_tools(public_copy, *as_user, CHROMIUM=str(chromium))
    assert result.returncode != 0
    assert "sudo apt-get install -y chromium" in result.stderr, result.stderr


# --- CI ------------------------------------------------------------------------------------------


def fake_tools(tmp_path: Path, make_status: dict[str, int]) -> tuple[Path, Path]:
    """`make` and `apt-get` stand-ins that record how they are called."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.write_text("")
    cases = "".join(f"  {target}) exit {code};;\n" for target, code in make_status.items())
    for tool in ("make", "apt-get"):
        script = bin_dir / tool
        script.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
            + (f'case "$1" in\n{cases}esac\n' if tool == "make" else "")
        )
        script.chmod(0o755)
    return bin_dir, calls


def run_ci(tmp_path: Path, make_status: dict[str, int]) -> tuple[int, list[str]]:
    bin_dir, calls = fake_tools(tmp_path, make_status)
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")],
        cwd=tmp_path,
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "CI": "true",
            # Whatever it installs goes into the test's own directory.
            "DOCKER_CONFIG": str(tmp_path / "docker"),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result.returncode, calls.read_text().splitlines()


def test_ci_runs_make_lint_then_make_test_and_nothing_else(tmp_path):
    assert run_ci(tmp_path, {}) == (0, ["make lint", "make test"])


def test_ci_stops_at_a_lint_failure_with_its_status(tmp_path):
    assert run_ci(tmp_path, {"lint": 3}) == (3, ["make lint"])
