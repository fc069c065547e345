"""The soak run's short version: mixed load under random faults, then the invariants.

The long run is `nox -s soak` (`python tests/soak.py --seconds 300`).
"""

from __future__ import annotations

import pytest
from mariadb import DRIVERS, MariaDB
from soak import soak

pytestmark = pytest.mark.mysql


@pytest.mark.timeout(180)
@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_soak_short(driver: str) -> None:
    server = MariaDB().start()  # its own server: the soak restarts and freezes it at will
    try:
        summary = await soak(server, seconds=25, seed=7, driver=driver)
    finally:
        server.close()
    print(summary.line())
    assert summary.scopes > 1000 and sum(summary.faults.values()) >= 8
    assert summary.unexplained == [], summary.unexplained[:10]
    assert summary.wrong_results == 0
    assert summary.leaked_sessions == 0
    assert summary.balanced
    assert summary.server_cancels > 10
    assert summary.max_sessions <= summary.session_bound, summary.busiest  # MAX_CONNS + 1, + 1 per failed stop
