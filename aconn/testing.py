"""pytest plugin: each test's writes rolled back at its end, on every alias of the app's handler.

Active once aconn is installed (the ``pytest11`` entry point ``aconn``); no
``pytest_plugins`` line is needed. Override ``aconn_connections`` in your
``conftest.py`` to return your app's :class:`aconn.Connections`, then request
``aconn_db`` in a test::

    # conftest.py
    import pytest
    from myapp.db import connections

    @pytest.fixture
    def aconn_connections():
        return connections

    # test_items.py
    async def test_add(aconn_db):
        ...  # app code, @connections.scoped jobs, requests through httpx.ASGITransport

Inside the test every scope of the handler, in any task of the test's event
loop, shares one connection per alias, in a transaction that is rolled back
when the test ends; the app's own ``atomic()`` blocks are savepoints in it.
See ``docs/testing.md`` for what cannot be rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .handler import Connections
from .transactions import TestTransaction

__all__ = ("TestTransaction", "aconn_connections", "aconn_db")

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
    async def aconn_db(aconn_connections: Connections) -> AsyncIterator[Connections]:
        """The test's writes on every alias of ``aconn_connections`` are rolled back at its end.

        Runs in the event loop of the fixture loop scope pytest-asyncio is configured with
        (``asyncio_default_fixture_loop_scope``): the same as the tests'.
        """
        if not isinstance(aconn_connections, Connections):
            pytest.fail(
                f"the aconn_connections fixture returned {type(aconn_connections).__name__}, not an aconn.Connections",
                pytrace=False,
            )
        async with TestTransaction(aconn_connections) as connections:
            yield connections

else:

    @pytest.fixture
    def aconn_db(aconn_connections: object) -> None:
        """Needs pytest-asyncio: the rollback runs in the test's event loop."""
        pytest.fail("the aconn_db fixture needs pytest-asyncio: pip install pytest-asyncio", pytrace=False)
