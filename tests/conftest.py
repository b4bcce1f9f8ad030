"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest
from inferforge.stacks.render import ensure_main_thread_event_loop


@pytest.fixture(autouse=True)
def main_thread_event_loop() -> None:
    """Tests that run Pulumi's mock runtime need a current event loop; an earlier asyncio.run() leaves none."""
    ensure_main_thread_event_loop()
