"""Shared pytest fixtures. Each helper area keeps its fixtures in its own block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from bot.testbed.sfu import LocalSfu

# --- local SFU (bot.testbed.sfu) ------------------------------------------------------


@dataclass(frozen=True)
class SfuApp:
    """The app id and secret every test SFU is started with."""

    app_id: str = "test-app"
    app_secret: str = "test-secret-0123456789abcdef"


SfuFactory = Callable[..., Awaitable[LocalSfu]]


@pytest.fixture
def sfu_app() -> SfuApp:
    return SfuApp()


@pytest.fixture
async def sfu_factory(sfu_app: SfuApp) -> AsyncIterator[SfuFactory]:
    """Start local SFUs with options (``sender_reports=False``, ...); all stopped after."""
    started: list[LocalSfu] = []

    async def make(**options: object) -> LocalSfu:
        server = LocalSfu(sfu_app.app_id, sfu_app.app_secret, **options)  # type: ignore[arg-type]
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
async def sfu(sfu_factory: SfuFactory) -> LocalSfu:
    """A started local SFU on a free 127.0.0.1 port, with sender reports and a=ssrc."""
    return await sfu_factory()


# --- end local SFU ---------------------------------------------------------------------
