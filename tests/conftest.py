"""Fixtures in the style of Core Lightning's pyln-testing.

* ``regtest`` — one session-scoped network: btcd, ``hub``, ``meter-1..3``, with channels.
* ``node_factory`` — extra lnd nodes on that network's btcd for tests that need their own.
* ``wait_for`` — re-exported from ``p2pep.regtest`` (deadlines scaled by P2PEP_TIMEOUT_SCALE).
* Hypothesis runs under the ``p2pep`` profile (below) for the whole suite.
* Every test fails (at teardown) if the services it ran in process logged an ERROR or a
  traceback it did not declare with ``@pytest.mark.expected_log_errors(regex, ...)``;
  scenario runs check their log files with ``logcheck.assert_service_logs_clean`` (see
  tests/logcheck.py). The ``log_errors`` fixture shows what was captured.
* Mutual TLS everywhere, tests included: one session-wide test CA (``test_tls``, autouse)
  whose folder every service setting reads (``P2PEP_TLS_DIR`` and each service's
  ``P2PEP_<SERVICE>_TLS_DIR``); a certificate for a name a test uses is issued the first
  time a component loads it (see ``tls_helpers``), so services run the real mTLS and
  authorization path. ``tls_helpers.dial(target, peer, as_=...)`` calls a service as anyone.
Run dirs live under pytest's tmp dirs, kept after a failure; a failed regtest test
shows the tail of every process log in its report.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import logcheck
import pytest
import tls_helpers
from hypothesis import HealthCheck, settings

from p2pep.regtest import NetworkSpec, RegtestNetwork, wait_for
from p2pep.regtest.errors import log_tail

__all__ = ["wait_for"]

# Property tests must not depend on the machine's speed or on earlier runs: no per-example
# deadline and no "too slow" health check (both wall-clock; a busy machine failed them),
# the same examples every run (derandomize, which also means no example database), and a
# failure prints the blob that reproduces it. Example counts are each test's own.
# HYPOTHESIS_PROFILE=p2pep-random explores fresh examples (same timing rules).
settings.register_profile("p2pep", deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("p2pep-random", settings.get_profile("p2pep"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "p2pep"))

_networks: list[RegtestNetwork] = []


@pytest.fixture(scope="session", autouse=True)
def test_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's test CA; every in-process service and client uses it."""
    with tls_helpers.test_ca(tmp_path_factory.mktemp("tls")) as tls_dir:
        yield tls_dir


@pytest.fixture
def operator_writes() -> Iterator[None]:
    """The test's operator certificate may call every RPC (``tls_helpers.operators_may_call_everything``)."""
    with tls_helpers.operators_may_call_everything():
        yield


@pytest.fixture(scope="session")
async def regtest(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegtestNetwork]:
    run_dir = tmp_path_factory.mktemp("regtest")
    net = await RegtestNetwork.up(NetworkSpec(meters=3), run_dir)
    _networks.append(net)
    yield net
    await net.down()


class NodeFactory:
    def __init__(self, net: RegtestNetwork) -> None:
        self.net = net
        self.created: list[str] = []
        self._counter = 0

    async def get_nodes(self, n: int, fund_sat: int = 20_000_000, prefix: str = "extra") -> list:
        names = []
        for _ in range(n):
            self._counter += 1
            name = f"{prefix}-{len(self.net.nodes)}-{self._counter}"
            names.append(name)
        nodes = await self.net.add_nodes(names, fund_sat)
        self.created += names
        return nodes

    async def cleanup(self) -> None:
        for name in self.created:
            node = self.net.nodes.pop(name)
            await node.stop()
        self.net.save()


@pytest.fixture
async def node_factory(regtest: RegtestNetwork) -> AsyncIterator[NodeFactory]:
    f = NodeFactory(regtest)
    yield f
    await f.cleanup()


@pytest.fixture(scope="session", autouse=True)
def _log_taps() -> Iterator[None]:
    with logcheck.installed():
        yield


_failed_key = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def log_errors(request: pytest.FixtureRequest) -> Iterator[logcheck.Capture]:
    """ERROR events and tracebacks logged in process during the test (setup to teardown).
    Set up before the test's other fixtures, so it also sees their teardown."""
    expected = logcheck.expected_of(request.node)
    logcheck.current_expected = expected
    try:
        with logcheck.capturing(expected) as cap:
            yield cap
    finally:
        logcheck.current_expected = []
    problems = cap.unexpected()
    if not problems:
        return
    text = logcheck.report(problems, f"{request.node.nodeid}: unexpected errors in the service logs:")
    if request.node.stash.get(_failed_key, False):
        # the test failed already: the log is evidence, not a second failure
        print(text)
        return
    pytest.fail(text, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[_failed_key] = True
    if report.failed and "regtest" in item.keywords:
        for net in _networks:
            logs: list[tuple[str, str]] = []
            if net.btcd is not None:
                logs.append(("btcd", net.btcd.info.log))
            logs += [(n.name, n.info.log) for n in net.nodes.values()]
            for name, path in logs:
                report.sections.append((f"log tail: {name} ({path})", log_tail(Path(path), 15)))
    return report
