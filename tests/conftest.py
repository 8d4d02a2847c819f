from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from tests.support.llama_rpc import ensure_rpc_binaries
from tests.support.postgres import temporary_postgres


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama GGUF that real llama.cpp loads and chats with."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with temporary_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on the embedded default (SQLite) and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gpufleet.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a clean schema per test
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    yield url


@pytest.fixture(scope="session")
def rpc_binaries() -> tuple[list[str], list[str]]:
    """(llama_server_cmd, rpc_server_cmd) of the RPC-capable llama.cpp build; waits for (or runs)
    scripts/build-llama-cpp.sh, and fails with the build log when there is none."""
    return ensure_rpc_binaries()


#: Tests that wait for a heavy install `scripts/test.sh` starts in the background, in the order they run
#: at the end of the suite: the llama.cpp build (rpc), then the vLLM engine environment (vllm).
#: The e2e journeys of an engine also add nodes to the session's cluster, which must not change
#: where the other journeys' models are placed: one more reason to run them last.
LATE_MARKERS = ("rpc", "vllm", "voxbox")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests that need a background install last (otherwise in collection order), so each
    install has the whole suite's duration to finish."""
    def rank(item: pytest.Item) -> int:
        return next((i + 1 for i, m in enumerate(LATE_MARKERS) if item.get_closest_marker(m)), 0)

    items[:] = sorted(items, key=rank)


#: Session clusters whose admin key a test's in-process clients should send.
CLUSTER_FIXTURES = ("cluster", "faults_cluster")


@pytest.fixture(autouse=True)
def _cluster_key(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's in-process clients send the key of the cluster it uses. Both the e2e and the fault
    cluster live for the whole session, and each sets the process's key when it starts, so without
    this the cluster started second would lend its key to the other's tests."""
    for name in CLUSTER_FIXTURES:
        if name in request.fixturenames:
            key = getattr(request.getfixturevalue(name), "api_key", None)
            if key:
                monkeypatch.setenv("GPUFLEET_API_KEY", key)
            return
