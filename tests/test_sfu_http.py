"""The local SFU's HTTP API with raw httpx: every status code and error body it promises."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from testbed.sfu import LocalSfu

from tests.conftest import new_session

pytestmark = pytest.mark.timeout(60)


async def _publish(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection], *, connect: bool = True
) -> str:
    """Publish one audio track named ``mic``; returns the publisher's session id."""
    session_id = await new_session(http)
    pc = RTCPeerConnection()
    pcs.append(pc)
    transceiver = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    response = await http.post(
        f"/sessions/{session_id}/tracks/new",
        json={
            "sessionDescription": {"type": "offer", "sdp": pc.localDescription.sdp},
            "tracks": [{"location": "local", "mid": transceiver.mid, "trackName": "mic"}],
        },
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["requiresImmediateRenegotiation"] is False
    assert body["tracks"] == [{"trackName": "mic", "mid": transceiver.mid}]
    assert body["sessionDescription"]["type"] == "answer"
    if connect:
        answer = body["sessionDescription"]["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return session_id


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


def _pull_body(publisher: str, name: str = "mic") -> dict[str, Any]:
    return {"tracks": [{"location": "remote", "sessionId": publisher, "trackName": name}]}


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == code
    assert body["errorDescription"]


async def test_new_session_is_201_with_a_32_hex_id_under_both_prefixes(
    sfu: LocalSfu, sfu_app: Any
) -> None:
    root = sfu.base_url.removesuffix("/v1")
    auth = {"Authorization": f"Bearer {sfu_app.app_secret}"}
    async with httpx.AsyncClient(headers=auth) as client:
        for prefix in (f"{root}/v1", root):
            response = await client.post(
                f"{prefix}/apps/{sfu_app.app_id}/sessions/new?correlationId=abc"
            )
            assert response.status_code == 201
            assert re.fullmatch(r"[0-9a-f]{32}", response.json()["sessionId"])
            state = await client.get(
                f"{prefix}/apps/{sfu_app.app_id}/sessions/{response.json()['sessionId']}"
            )
            assert state.json() == {"tracks": [], "dataChannels": []}


async def test_wrong_or_missing_secret_is_401_and_unknown_app_is_404(
    sfu: LocalSfu, sfu_app: Any
) -> None:
    async with httpx.AsyncClient(base_url=sfu.base_url) as client:
        url = f"/apps/{sfu_app.app_id}/sessions/new"
        _assert_error(await client.post(url), 401, "unauthorized")
        wrong = {"Authorization": "Bearer not-the-secret"}
        response = await client.post(url, headers=wrong)
        _assert_error(response, 401, "unauthorized")
        assert sfu_app.app_secret not in response.text
        right = {"Authorization": f"Bearer {sfu_app.app_secret}"}
        _assert_error(
            await client.post("/apps/other-app/sessions/new", headers=right), 404, "not_found"
        )


async def test_body_that_is_not_json_is_400_decoding_error(http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    response = await http.post(f"/sessions/{session_id}/tracks/new", content=b"{not json")
    _assert_error(response, 400, "decoding_error")
    response = await http.post(f"/sessions/{session_id}/tracks/new", json=["a", "list"])
    _assert_error(response, 400, "decoding_error")


async def test_bad_fields_and_limits_are_406_invalid_params(http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    url = f"/sessions/{session_id}/tracks/new"
    bad_location = {"tracks": [{"location": "elsewhere", "trackName": "a"}]}
    _assert_error(await http.post(url, json=bad_location), 406, "invalid_params")
    too_many = {
        "tracks": [
            {"location": "remote", "sessionId": session_id, "trackName": f"t{i}"} for i in range(65)
        ]
    }
    _assert_error(await http.post(url, json=too_many), 406, "invalid_params")
    mixed = {
        "tracks": [
            {"location": "remote", "sessionId": session_id, "trackName": "a"},
            {"location": "local", "mid": "0", "trackName": "b"},
        ]
    }
    _assert_error(await http.post(url, json=mixed), 406, "invalid_params")
    _assert_error(await http.post(url, json={"tracks": []}), 406, "invalid_params")


async def test_unknown_session_is_410_session_error(http: httpx.AsyncClient) -> None:
    unknown = "0" * 32
    _assert_error(await http.get(f"/sessions/{unknown}"), 410, "session_error")
    response = await http.post(f"/sessions/{unknown}/tracks/new", json=_pull_body(unknown))
    _assert_error(response, 410, "session_error")


async def test_pull_of_an_unpublished_track_fails_per_item_with_empty_mid(
    http: httpx.AsyncClient,
) -> None:
    session_id = await new_session(http)
    response = await http.post(
        f"/sessions/{session_id}/tracks/new", json=_pull_body("f" * 32, "nobody")
    )
    assert response.status_code == 200
    body = response.json()
    assert body["requiresImmediateRenegotiation"] is False
    assert "sessionDescription" not in body
    [track] = body["tracks"]
    assert track["mid"] == ""
    assert track["errorCode"] == "not_found_track_error"


async def test_pull_offers_then_refuses_overlapping_mutation_until_renegotiated(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher = await _publish(http, pcs)
    puller = await new_session(http)
    url = f"/sessions/{puller}/tracks/new"
    response = await http.post(url, json=_pull_body(publisher))
    body = response.json()
    assert response.status_code == 200, body
    assert body["requiresImmediateRenegotiation"] is True
    assert body["sessionDescription"]["type"] == "offer"
    [track] = body["tracks"]
    assert track == {"sessionId": publisher, "trackName": "mic", "mid": track["mid"]}
    assert "a=sendonly" in body["sessionDescription"]["sdp"]

    response = await http.post(url, json=_pull_body(publisher))
    assert response.status_code == 406
    assert response.json()["errorCode"]

    pc = RTCPeerConnection()
    pcs.append(pc)
    offer = body["sessionDescription"]["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    response = await http.put(
        f"/sessions/{puller}/renegotiate",
        json={"sessionDescription": {"type": "answer", "sdp": pc.localDescription.sdp}},
    )
    assert response.status_code == 200
    assert response.json() == {}
    state = (await http.get(f"/sessions/{puller}")).json()
    # Answered, but active only once a packet was forwarded (the transport may still be
    # connecting): until then the track reads initializing, as Cloudflare's may.
    [pulled] = state["tracks"]
    assert pulled.pop("status") in ("initializing", "active")
    assert pulled == {
        "location": "remote",
        "mid": track["mid"],
        "trackName": "mic",
        "sessionId": publisher,
    }

    # The SFU offer is answered: the next mutation goes through.
    close = await http.put(
        f"/sessions/{puller}/tracks/close", json={"tracks": [{"mid": track["mid"]}], "force": True}
    )
    assert close.status_code == 200, close.text
    assert close.json()["tracks"] == [{"mid": track["mid"]}]
    state = (await http.get(f"/sessions/{puller}")).json()
    assert state["tracks"][0]["status"] == "inactive"


async def test_renegotiate_without_a_pending_offer_is_400(http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    response = await http.put(
        f"/sessions/{session_id}/renegotiate",
        json={"sessionDescription": {"type": "answer", "sdp": "v=0\r\n"}},
    )
    _assert_error(response, 400, "invalid_session_description")


async def test_close_and_update_of_unknown_mids_fail_per_item(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher = await _publish(http, pcs)
    close = await http.put(
        f"/sessions/{publisher}/tracks/close",
        json={"tracks": [{"mid": "0"}, {"mid": "99"}], "force": True},
    )
    assert close.status_code == 200, close.text
    ok, failed = close.json()["tracks"]
    assert ok == {"mid": "0"}
    assert failed["mid"] == "99"
    assert failed["errorCode"] == "close_track_error"
    again = await http.put(
        f"/sessions/{publisher}/tracks/close", json={"tracks": [{"mid": "0"}], "force": True}
    )
    assert again.json()["tracks"][0]["errorCode"] == "close_track_error"
    update = await http.put(
        f"/sessions/{publisher}/tracks/update",
        json={"tracks": [{"location": "remote", "mid": "42", "simulcast": {"preferredRid": "h"}}]},
    )
    assert update.status_code == 200
    assert update.json()["tracks"][0]["errorCode"] == "update_track_error"
    # A closed published track can no longer be pulled.
    puller = await new_session(http)
    pull = await http.post(f"/sessions/{puller}/tracks/new", json=_pull_body(publisher))
    assert pull.json()["tracks"][0]["errorCode"] == "not_found_track_error"


async def test_data_channels_are_501(http: httpx.AsyncClient) -> None:
    session_id = await new_session(http)
    response = await http.post(f"/sessions/{session_id}/datachannels/new", json={})
    _assert_error(response, 501, "not_implemented")


async def test_mutation_on_a_negotiated_but_unconnected_session_is_425(
    sfu_factory: Any, sfu_app: Any, pcs: list[RTCPeerConnection]
) -> None:
    sfu = await sfu_factory(connect_wait_s=0.3)
    async with httpx.AsyncClient(
        base_url=f"{sfu.base_url}/apps/{sfu_app.app_id}",
        headers={"Authorization": f"Bearer {sfu_app.app_secret}"},
    ) as http:
        # The publisher never applies the answer, so its transport never connects.
        publisher = await _publish(http, pcs, connect=False)
        response = await http.put(
            f"/sessions/{publisher}/tracks/close", json={"tracks": [{"mid": "0"}], "force": True}
        )
        _assert_error(response, 425, "session_error")


async def test_session_whose_transport_closed_expires_to_410(
    sfu_factory: Any, sfu_app: Any, pcs: list[RTCPeerConnection]
) -> None:
    sfu = await sfu_factory(session_expiry_s=0.2)
    async with httpx.AsyncClient(
        base_url=f"{sfu.base_url}/apps/{sfu_app.app_id}",
        headers={"Authorization": f"Bearer {sfu_app.app_secret}"},
    ) as http:
        publisher = await _publish(http, pcs)
        url = f"/sessions/{publisher}"
        # Wait for the transport to connect (the SFU reports the track active meanwhile).
        puller = await new_session(http)
        pull = await http.post(f"/sessions/{puller}/tracks/new", json=_pull_body(publisher))
        assert pull.json()["tracks"][0]["mid"] != ""
        await pcs[0].close()

        async def gone() -> None:
            # Expiry is only observable over HTTP: poll it, bounded by wait_for below.
            while (await http.get(url)).status_code != 410:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(gone(), 10)
        _assert_error(await http.get(url), 410, "session_error")


async def test_pull_with_the_callers_own_offer_is_answered_and_media_flows(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher = await _publish(http, pcs)
    puller = await new_session(http)
    pc = RTCPeerConnection()
    pcs.append(pc)
    arrived: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pc.on("track", lambda track: arrived.done() or arrived.set_result(track))
    transceiver = pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    body = _pull_body(publisher)
    body["tracks"][0]["mid"] = transceiver.mid
    body["sessionDescription"] = {"type": "offer", "sdp": pc.localDescription.sdp}
    response = await http.post(f"/sessions/{puller}/tracks/new", json=body)
    result = response.json()
    assert response.status_code == 200, result
    assert result["requiresImmediateRenegotiation"] is False
    assert result["tracks"][0]["mid"] == transceiver.mid
    assert result["sessionDescription"]["type"] == "answer"
    answer = result["sessionDescription"]["sdp"]
    assert "a=sendonly" in answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    track = await asyncio.wait_for(arrived, 10)
    frame = await asyncio.wait_for(track.recv(), 10)
    assert frame.sample_rate == 48000


async def test_legacy_offer_on_new_session_then_publish_by_mid_and_auto_discover(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    pc = RTCPeerConnection()
    pcs.append(pc)
    first = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    response = await http.post(
        "/sessions/new",
        json={"sessionDescription": {"type": "offer", "sdp": pc.localDescription.sdp}},
    )
    assert response.status_code == 201
    session_id = response.json()["sessionId"]
    assert response.json()["sessionDescription"]["type"] == "answer"
    answer = response.json()["sessionDescription"]["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    named = await http.post(
        f"/sessions/{session_id}/tracks/new",
        json={"tracks": [{"location": "local", "mid": first.mid, "trackName": "legacy"}]},
    )
    assert named.status_code == 200, named.text
    assert named.json()["tracks"] == [{"trackName": "legacy", "mid": first.mid}]

    second = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    discovered = await http.post(
        f"/sessions/{session_id}/tracks/new",
        json={
            "autoDiscover": True,
            "sessionDescription": {"type": "offer", "sdp": pc.localDescription.sdp},
        },
    )
    assert discovered.status_code == 200, discovered.text
    [track] = discovered.json()["tracks"]
    assert track["mid"] == second.mid
    assert re.fullmatch(r"[0-9a-f]{32}", track["trackName"])
    state = (await http.get(f"/sessions/{session_id}")).json()
    assert {t["trackName"] for t in state["tracks"]} == {"legacy", track["trackName"]}


async def test_close_without_force_makes_an_sfu_offer_to_answer(
    http: httpx.AsyncClient, pcs: list[RTCPeerConnection]
) -> None:
    publisher = await _publish(http, pcs)
    puller = await new_session(http)
    pc = RTCPeerConnection()
    pcs.append(pc)

    async def answer(offer: str) -> None:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        response = await http.put(
            f"/sessions/{puller}/renegotiate",
            json={"sessionDescription": {"type": "answer", "sdp": pc.localDescription.sdp}},
        )
        assert response.status_code == 200, response.text

    pull = (await http.post(f"/sessions/{puller}/tracks/new", json=_pull_body(publisher))).json()
    await answer(pull["sessionDescription"]["sdp"])
    mid = pull["tracks"][0]["mid"]
    close = await http.put(
        f"/sessions/{puller}/tracks/close", json={"tracks": [{"mid": mid}], "force": False}
    )
    body = close.json()
    assert close.status_code == 200, body
    assert body["requiresImmediateRenegotiation"] is True
    assert body["sessionDescription"]["type"] == "offer"
    assert "a=inactive" in body["sessionDescription"]["sdp"]
    await answer(body["sessionDescription"]["sdp"])


async def test_legacy_session_with_an_offer_without_media_is_400(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/sessions/new", json={"sessionDescription": {"type": "offer", "sdp": "v=0\r\nbogus"}}
    )
    _assert_error(response, 400, "invalid_session_description")
