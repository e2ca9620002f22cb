"""The Kubernetes examples in deploy/kubernetes, validated offline.

Every document is checked against the Kubernetes API's own models (the ``kubernetes``
client's generated classes: field names, types, required fields), strictly: an unknown
or misspelt field is an error, where ``kubectl apply`` might silently drop it. Then the
parts that must agree with the recorder are checked against the recorder itself: the
ConfigMap's config.toml loads with ``bot.config``, the Job's arguments parse with
``bot``'s own parser, and the time and disk budgets cover what the settings allow.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from bot.cli import build_parser
from bot.config import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KINDS = {
    ("batch/v1", "Job"): "V1Job",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (str, int, float, bool, dict, list),
    "datetime": (str,),
    "date": (str,),
}


def validate(value: Any, type_name: str, where: str) -> list[str]:
    """Errors of ``value`` against the client's type ``type_name`` (empty when valid)."""
    if match := re.fullmatch(r"[Ll]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in validate(v, match[1], f"{where}[{i}]")]
    if match := re.fullmatch(r"[Dd]ict\((?:str), (.+)\)", type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, v in value.items() for e in validate(v, match[1], f"{where}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(value, bool):
            ok = False
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    model = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = [f"{where}.{k}: no such field in {type_name}" for k in value if k not in by_json]
    known = {by_json[k]: v for k, v in value.items() if k in by_json}
    for attr, v in known.items():
        errors += validate(v, model.openapi_types[attr], f"{where}.{model.attribute_map[attr]}")
    try:
        model(**known)  # the generated setters refuse a missing required field
    except ValueError as exc:
        errors.append(f"{where}: {exc}")
    return errors


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str, file: str | None = None) -> dict[str, Any]:
    """The one document of ``kind`` (in ``file``, where several files have one)."""
    (doc,) = [d for name, d in documents() if d["kind"] == kind and file in (None, name)]
    return doc


def test_there_are_manifests_of_every_kind() -> None:
    assert {(d["apiVersion"], d["kind"]) for _, d in documents()} == set(KINDS)


@pytest.mark.parametrize("name,doc", documents(), ids=lambda x: x if isinstance(x, str) else "")
def test_manifest_is_valid_against_the_api_models(name: str, doc: dict[str, Any]) -> None:
    type_name = KINDS[(doc["apiVersion"], doc["kind"])]
    assert validate(doc, type_name, name) == []


def test_validator_rejects_unknown_and_mistyped_fields() -> None:
    job = by_kind("Job", "job.yaml")
    job["spec"]["activeDeadLineSeconds"] = 10
    job["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8790"
    del job["spec"]["template"]["spec"]["containers"][0]["name"]
    errors = validate(job, "V1Job", "job")
    assert any("activeDeadLineSeconds: no such field" in e for e in errors)
    assert any("containerPort: expected int" in e for e in errors)
    assert any("`name`, must not be `None`" in e for e in errors)


def _container(file: str = "job.yaml") -> dict[str, Any]:
    job = by_kind("Job", file)
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def _config_toml() -> str:
    text: str = by_kind("ConfigMap")["data"]["config.toml"]
    return text


def test_configmap_config_loads_as_recorder_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_config_toml())
    secrets = {k: "x" * 40 for k in by_kind("Secret")["stringData"]}
    settings = load_settings(config, env=secrets)
    assert settings.control.enabled and settings.control.host == "0.0.0.0"
    assert settings.storage.backend == "s3"


def test_job_arguments_parse_with_the_recorder_cli() -> None:
    args = [
        a.replace("CONSULTATION_ID", "c123").replace("PARTICIPANT_", "p:clinician=s/t")
        for a in _container()["args"]
    ]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "record" and parsed.consultation_id == "c123"
    assert str(parsed.config) == "/etc/recorder/config.toml"


def test_compose_job_arguments_parse_with_the_recorder_cli() -> None:
    args = [
        a.replace("RECORDING_KEY", "c/2026-12-02/c1/r1.mp4")
        for a in _container("compose-job.yaml")["args"]
    ]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "compose" and parsed.key == "c/2026-12-02/c1/r1.mp4"
    assert parsed.threads == 2 and str(parsed.config) == "/etc/recorder/config.toml"


def test_job_budgets_cover_what_the_settings_allow() -> None:
    job = by_kind("Job", "job.yaml")
    pod = job["spec"]["template"]["spec"]
    settings = tomllib.loads(_config_toml())
    # Time: the recording ends on its own before the deadline, and a SIGTERM leaves time
    # to store it while the store is down (finish_timeout) plus the webhook's drain.
    assert job["spec"]["activeDeadlineSeconds"] > settings["recording"]["max_duration"] + 300
    assert pod["terminationGracePeriodSeconds"] >= settings["storage"]["finish_timeout"] + 30
    assert pod["restartPolicy"] == "Never"
    # Disk: the spool lives on the emptyDir and stops before the kubelet's limit.
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    assert settings["storage"]["spool_dir"].startswith(mounts["spool"] + "/")
    (spool,) = [v for v in pod["volumes"] if v["name"] == "spool"]
    assert settings["storage"]["max_spool_bytes"] < _bytes(spool["emptyDir"]["sizeLimit"])
    # Non-root with a read-only root, matching the image's user.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert _container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert _container()["ports"][0]["containerPort"] == settings["control"]["port"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def test_object_names_and_labels_are_valid() -> None:
    dns_label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
    label_value = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
    for name, doc in documents():
        meta = doc["metadata"]
        object_name = meta.get("name") or meta["generateName"].rstrip("-")
        assert dns_label.fullmatch(object_name), (name, object_name)
        for value in meta.get("labels", {}).values():
            assert label_value.fullmatch(value), (name, value)
