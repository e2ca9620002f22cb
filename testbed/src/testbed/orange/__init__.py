"""Orange Meets' own MLS worker as a call's other members: an implementation nobody here wrote.

Orange's shipped worker (openmls 0.7.1 compiled to WASM, from ``../shared/interop/
orange-e2ee/``) runs in Node, one WASM instance per member, driven over JSON lines by
``member.js``. Events and their outputs are the worker's own (``initialize``,
``initializeAndCreateGroup``, ``userJoined``, ``recvMlsWelcome``, ``recvMlsMessage``,
``userLeft``; out: ``shareKeyPackage``, ``sendMlsWelcome``, ``sendMlsMessage``,
``newSafetyNumber``); frames go through its ``encryptStream``/``decryptStream`` path as
``RTCEncoded*Frame`` shims. Tests relay handshake messages between members the way
Orange's room does.
"""

from __future__ import annotations

import base64
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from testbed.nodejs import NodeScript

INTEROP_ENV: Final = "ORANGE_E2EE"
DEFAULT_INTEROP: Final = Path(__file__).resolve().parents[4].parent / "shared/interop/orange-e2ee"
"""``../shared/interop/orange-e2ee`` beside the checkout, where the workplace puts it."""
MEMBER_JS: Final = Path(__file__).with_name("member.js")

Kind = Literal["audio", "video"]


def interop_dir() -> Path | None:
    """Orange's worker folder, or None when it (or Node) is not on this machine."""
    folder = Path(os.environ.get(INTEROP_ENV) or DEFAULT_INTEROP)
    if shutil.which("node") is None or not (folder / "wasm-pkg").is_dir():
        return None
    return folder


@dataclass(frozen=True)
class Output:
    """One message the worker asks the app to send (bytes fields decoded)."""

    type: str
    fields: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


class OrangeWorkers:
    """A Node process hosting any number of Orange members; close it when done. Calls may
    come from several threads (publishers encrypt in their media threads): one at a time."""

    def __init__(self, folder: Path) -> None:
        self._node = NodeScript(MEMBER_JS, env={INTEROP_ENV: str(folder)})

    def __enter__(self) -> OrangeWorkers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._node.close()

    def new(self, member: str) -> None:
        self._call(op="new", m=member)

    def event(self, member: str, kind: str, **fields: Any) -> list[Output]:
        """Hand the worker one event; what it wants sent comes back."""
        event: dict[str, Any] = {"type": kind}
        for name, value in fields.items():
            if isinstance(value, bytes | bytearray):
                event[name + "_b64"] = base64.b64encode(value).decode()
            else:
                event[name] = value
        outputs = []
        for raw in self._call(op="event", m=member, ev=event)["out"]:
            decoded = {
                name.removesuffix("_b64"): base64.b64decode(value)
                if name.endswith("_b64")
                else value
                for name, value in raw.items()
                if name != "type"
            }
            outputs.append(Output(raw["type"], decoded))
        return outputs

    def encrypt(self, member: str, frame: bytes, kind: Kind = "video") -> bytes:
        encoded = base64.b64encode(frame).decode()
        return base64.b64decode(
            self._call(op="encrypt", m=member, kind=kind, frame=encoded)["frame"]
        )

    def decrypt(self, member: str, frame: bytes, kind: Kind = "video") -> bytes:
        encoded = base64.b64encode(frame).decode()
        return base64.b64decode(
            self._call(op="decrypt", m=member, kind=kind, frame=encoded)["frame"]
        )

    def _call(self, **command: Any) -> dict[str, Any]:
        return self._node.call(**command)


def of_type(outputs: list[Output], kind: str) -> list[Output]:
    return [output for output in outputs if output.type == kind]
