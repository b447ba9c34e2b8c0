import pytest

from tests.support.browser import browser  # noqa: F401 (a fixture, for the page tests)
from tests.support.processes import start_simulator
from tests.support.stack import make_stack


@pytest.fixture(scope="module")
def e2e_sim(tmp_path_factory):
    """A simulator of the module's own: these tests change its delays and inject faults."""
    sim = start_simulator(
        tmp_path_factory.mktemp("sim"), "--operation-delay", "0.3", "--boot-delay", "0.5"
    )
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, e2e_sim, openbao, migrated_database_url, redis_url):
    s = make_stack(
        tmp_path_factory.mktemp("stack"), e2e_sim, openbao, migrated_database_url, redis_url
    )
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clear_faults(request):
    yield
    if "stack" in request.fixturenames:
        sim = request.getfixturevalue("e2e_sim")
        sim.admin("DELETE", "/cloud/faults")
        sim.admin("DELETE", "/guests/faults")
        sim.admin("POST", "/cloud/config", json={"operation_delay": 0.3})
        sim.admin("POST", "/guests/config", json={"boot_delay": 0.5})
