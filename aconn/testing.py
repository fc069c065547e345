"""pytest plugin: each test's writes rolled back at its end, on every alias of the app's handler.

Active once aconn is installed (the ``pytest11`` entry point ``aconn``); no
``pytest_plugins`` line is needed. Override ``aconn_connections`` in your
``conftest.py`` to return your app's :class:`aconn.Connections`, then request
``aconn_db`` in a test::

    # conftest.py
    import pytest
    from myapp.db import connections

    @pytest.fixture
    async def aconn_connections():
        async with connections:      # opened and closed around each test
            yield connections

    # test_items.py
    async def test_add(aconn_db):
        ...  # app code, @connections.scoped jobs, requests through httpx.ASGITransport

Inside the test every scope of the handler, in any task of the test's event
loop, shares one connection per alias, in a transaction that is rolled back
when the test ends; the app's own ``atomic()`` blocks are savepoints in it.
``connections.on_commit()`` callbacks are kept, never run (the transaction never
commits): ``aconn_on_commit`` lists them and runs them on demand.
See ``docs/testing.md`` for what cannot be rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .handler import Connections
from .transactions import TestTransaction

__all__ = ("TestTransaction", "aconn_connections", "aconn_db", "aconn_on_commit")

#: where aconn_db keeps the test's transaction, for aconn_on_commit
_TRANSACTION = pytest.StashKey[TestTransaction[Connections]]()

try:
    import pytest_asyncio
except ImportError:  # the fixture needs it; say so when a test asks for it
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def aconn_connections() -> Connections:
    """The app's handler. Override this fixture in your conftest.py to return it."""
    pytest.fail(
        "aconn_db needs your app's handler: define a fixture named `aconn_connections` in your "
        "conftest.py that returns it (the aconn.Connections your app uses), e.g.\n\n"
        "    @pytest.fixture\n"
        "    def aconn_connections():\n"
        "        from myapp.db import connections\n"
        "        return connections\n",
        pytrace=False,
    )


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def aconn_db(aconn_connections: Connections, request: pytest.FixtureRequest) -> AsyncIterator[Connections]:
        """The test's writes on every alias of ``aconn_connections`` are rolled back at its end.

        Runs in the event loop of the fixture loop scope pytest-asyncio is configured with
        (``asyncio_default_fixture_loop_scope``): the same as the tests'.
        """
        if not isinstance(aconn_connections, Connections):
            pytest.fail(
                f"the aconn_connections fixture returned {type(aconn_connections).__name__}, not an aconn.Connections",
                pytrace=False,
            )
        transaction = TestTransaction(aconn_connections)
        request.node.stash[_TRANSACTION] = transaction
        async with transaction as connections:
            yield connections


@pytest.fixture
def aconn_on_commit(aconn_db: Connections, request: pytest.FixtureRequest) -> TestTransaction[Connections]:
    """The test's transaction, for its ``on_commit()`` callbacks (pytest-django's
    ``django_capture_on_commit_callbacks``): ``aconn_on_commit.on_commit_callbacks()`` lists
    those whose blocks succeeded, ``await aconn_on_commit.run_on_commit()`` runs them."""
    transaction: TestTransaction[Connections] = request.node.stash[_TRANSACTION]
    return transaction


if pytest_asyncio is None:

    @pytest.fixture
    def aconn_db(aconn_connections: object) -> None:
        """Needs pytest-asyncio: the rollback runs in the test's event loop."""
        pytest.fail("the aconn_db fixture needs pytest-asyncio: pip install pytest-asyncio", pytrace=False)
