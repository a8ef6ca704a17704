"""Shared pytest set-up.

Jittor is imported once through models.runtime (quiet logs, CPU unless a GPU is present).
A session in which no test passed fails, so CI can never go green without running tests.
"""

from __future__ import annotations

import signal

import pytest


@pytest.fixture(autouse=True)
def _default_sigchld():
    """Jittor, once imported, installs a SIGCHLD handler that ends its process when a child dies
    of a signal (docs/CONTRIBUTING.md). Tests kill children on purpose (interrupted runs): in the
    test runner, which imports Jittor too, that must not end the whole session."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    if not reporter.stats.get("passed"):
        reporter.write_line("error: no test passed (all skipped or deselected?)", red=True)
        session.exitstatus = 1
