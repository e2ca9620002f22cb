"""Shared pytest fixtures. Each helper area keeps its fixtures in its own block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from testbed.s3 import LocalS3
from testbed.sfu import LocalSfu
from testbed.stack import LocalCall, start_local_sfu

# --- local SFU (testbed.sfu) ------------------------------------------------------


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


# --- a local call with two synthetic participants, and a local S3 store -----------------


@pytest.fixture
async def two_party_call() -> AsyncIterator[LocalCall]:
    """The local SFU with a clinician (c1) and a patient (p2) publishing, each a process."""
    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p2")
        yield call
    finally:
        await call.close()


@pytest.fixture
async def s3() -> AsyncIterator[LocalS3]:
    """A SeaweedFS store on free loopback ports, removed afterwards."""
    async with LocalS3() as store:
        yield store


def sfu_api(sfu: LocalSfu, app: SfuApp) -> httpx.AsyncClient:
    """A raw client rooted at the SFU's ``/v1/apps/{appId}`` with the right bearer secret."""
    return httpx.AsyncClient(
        base_url=f"{sfu.base_url}/apps/{app.app_id}",
        headers={"Authorization": f"Bearer {app.app_secret}"},
        timeout=15,
    )


@pytest.fixture
async def http(sfu: LocalSfu, sfu_app: SfuApp) -> AsyncIterator[httpx.AsyncClient]:
    async with sfu_api(sfu, sfu_app) as client:
        yield client


async def new_session(http: httpx.AsyncClient) -> str:
    """``POST /sessions/new``, checked to be 201; the new session's id."""
    response = await http.post("/sessions/new")
    assert response.status_code == 201
    session_id: str = response.json()["sessionId"]
    return session_id
