"""Every collected test runs: a skipped or xfail-marked test fails the run.

A test that cannot run for want of a tool is not a passing test: `make test` installs the tools
(devtools/ensure-tools.sh), so a skip means something is missing or broken and is reported as a
failure, one line per test naming it and its reason. xfail is refused for the same reason: a known
bug gets its fix, with the test that fails before it, not a marker that lets the suite pass.
"""

import pytest


class NoSkips:
    def __init__(self) -> None:
        self.not_run: list[tuple[str, str]] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a module-level pytest.skip or importorskip
            self.not_run.append((report.nodeid, _skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail"):  # xfailed, or xpassed
            self.not_run.append((report.nodeid, f"xfail: {report.wasxfail}"))
        elif report.skipped:
            self.not_run.append((report.nodeid, _skip_reason(report)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.not_run and session.exitstatus in passing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for nodeid, reason in self.not_run:
            terminalreporter.write_line(
                f"NOT RUN (a skip fails the run): {nodeid} - {reason}", red=True, bold=True
            )


def _skip_reason(report) -> str:
    # A skip's longrepr is (path, line, "Skipped: <reason>").
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(NoSkips(), "no-skips-recorder")
