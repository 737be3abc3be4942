import pytest

from tests.e2e.psa import PsaReceiver
from tests.e2e.server import Server


@pytest.fixture(scope="session")
def psa_receiver():
    receiver = PsaReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory, psa_receiver):
    srv = Server(
        tmp_path_factory.mktemp("e2e"),
        {"RMM_PSA_WEBHOOK_URL": psa_receiver.url, "RMM_PSA_WEBHOOK_SECRET": psa_receiver.secret},
    ).start()
    yield srv
    srv.stop()
