import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread: the tests' tiny models run about ten times faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres_programs():
    """The folder of PostgreSQL's initdb and pg_ctl; the test is skipped, with the reason, without them
    or without the driver (the `postgres` extra)."""
    from tests.postgres import find_programs

    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install -e '.[postgres]'")
    folder, why = find_programs()
    if folder is None:
        pytest.skip(why)
    return folder


@pytest.fixture(scope="session")
def postgres_server(postgres_programs):
    """One throwaway PostgreSQL server for the session (tests/postgres.py), stopped and removed at its end."""
    from tests.postgres import postgres_server

    with postgres_server(postgres_programs) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server, request):
    """The SQLAlchemy URL of a new, empty database on the session's PostgreSQL server."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    yield postgres_server.create_database(name)
    postgres_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
