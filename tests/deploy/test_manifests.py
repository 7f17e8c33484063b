"""Fast checks of the deployment files: the Containerfile, the compose file with its NATS
configs, and the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gridpilot.core.config import DEFAULT_MODEL_WAIT_S, INSTANCE_ID
from gridpilot.platform.broker import nats_server_binary
from gridpilot.platform.catalog import SERVICES
from gridpilot.platform.permissions import DEVICE_CREDENTIALS_FILE, PERMISSIONS
from gridpilot.platform.tls import ensure_certs
from tests.deploy.k8s_render import render, render_fallback

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33"  # a recent release the schemas of kubernetes-validate cover


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _command(svc: dict[str, Any]) -> list[str]:
    return list(svc.get("command") or [])


# -- image ---------------------------------------------------------------------------------
def test_containerfile_is_parametrised_non_root_and_secret_free() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert "ARG BASE=docker.io/library/python:3.11-slim" in text
    assert re.search(r"^FROM \$\{BASE\}$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert 'ENTRYPOINT ["gridpilot"]' in text
    assert 'CMD ["run", "state_estimation"]' in text
    assert "GRIDPILOT_DATA_DIR=/data" in text
    assert not re.search(r"PASSWORD\s*=", text)


# -- compose -------------------------------------------------------------------------------
def test_compose_runs_every_service_in_its_own_container() -> None:
    services = _compose()["services"]
    run = [_command(s)[1] for s in services.values() if _command(s)[:1] == ["run"]]
    assert set(run) == set(SERVICES)
    assert run.count("state_estimation") == 2
    instances = []
    for svc in services.values():
        if _command(svc)[1:2] == ["state_estimation"]:
            assert _command(svc)[2:] == ["--grid", "all"]
            instances.append(svc["environment"]["GRIDPILOT_INSTANCE"])
    assert len(set(instances)) == 2 and all(INSTANCE_ID.match(i) for i in instances)
    assert {"nats1", "nats2", "nats3", "postgres", "init"} <= set(services)


def test_compose_gridpilot_containers_are_read_only_and_get_passwords_from_secrets() -> None:
    compose = _compose()
    declared = compose["secrets"]
    gen = (DEPLOY / "compose" / "gen-secrets.sh").read_text()
    for name, secret in declared.items():
        assert name in gen, f"gen-secrets.sh does not create {name}"
        assert secret["file"] == f"./compose/secrets/{name}"
    for name, svc in compose["services"].items():
        if name != "postgres":
            assert svc.get("read_only") is True, name
        env = svc.get("environment", {})
        for key, value in env.items():
            assert not (key.endswith("PASSWORD") and value), f"{name}: {key} inlined"
            if key.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), (name, key)
                assert value.rsplit("/", 1)[1] in svc["secrets"], (name, key)
        user = env.get("GRIDPILOT_NATS_USER")
        if user:
            assert user in PERMISSIONS
            if name != "init":
                assert env["GRIDPILOT_NATS_PASSWORD_FILE"] == f"/run/secrets/nats_{user}"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            # ./compose/secrets is what gen-secrets.sh makes (git-ignored)
            if source.startswith("./") and not source.startswith("./compose/secrets/"):
                assert (DEPLOY / source).exists(), (name, source)
    for node in ("nats1", "nats2", "nats3"):
        got = set(compose["services"][node]["secrets"])
        # and the meters' own MQTT users (the simulator's logins)
        assert got == {f"nats_{identity}" for identity in PERMISSIONS} | {DEVICE_CREDENTIALS_FILE}
    assert DEVICE_CREDENTIALS_FILE in compose["services"]["simulator"]["secrets"]


def test_compose_nats_nodes_form_a_jetstream_cluster(tmp_path: Path) -> None:
    """Each node's config with the rendered users passes ``nats-server -t``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nats_node", DEPLOY / "compose" / "nats_node.py")
    assert spec and spec.loader
    nats_node = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nats_node)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    tls_dir = ensure_certs(tmp_path / "pki", hosts=["nats1", "nats2", "nats3"]).pki.dir
    for identity in PERMISSIONS:
        (secrets / f"nats_{identity}").write_text(f"pw-{identity}\n")
    # gen-secrets.sh's meters: one MQTT user each, for every meter of the grid's registry
    assert nats_node.ensure_devices(secrets, "cigre_mv") > 0
    auth = nats_node.authorization(secrets)
    assert "meter.cigre_mv." in auth
    for i in (1, 2, 3):
        conf = (DEPLOY / "compose" / "nats" / f"node{i}.conf").read_text()
        assert f'server_name: "nats{i}"' in conf
        assert "jetstream {" in conf
        for peer in (1, 2, 3):
            assert f"nats://nats{peer}:6222" in conf
        # TLS on the client port, MQTT and the routes; clients and routes need certificates
        assert conf.count("tls {") == 3 and conf.count("verify: true") == 2
        assert "http:" not in conf and "8222" not in conf  # no monitoring port (no login)
        path = tmp_path / f"node{i}.conf"
        conf = conf.replace("/data/jetstream", str(tmp_path / "js"))
        path.write_text(conf.replace("/etc/gridpilot-tls", str(tls_dir)) + auth)
        subprocess.run([str(nats_server_binary()), "-t", "-c", str(path)], check=True)


TLS_DIR = "/etc/gridpilot-tls"


def test_compose_every_connection_is_tls() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        if name == "postgres":
            continue
        mounts = [v.split(":")[:2] for v in svc.get("volumes", [])]
        assert ["./compose/secrets/tls", TLS_DIR] in mounts, name
        env = svc.get("environment", {})
        if name.startswith("nats"):
            continue
        assert all(u.startswith("tls://") for u in env["GRIDPILOT_NATS_URL"].split(",")), name
        assert env["GRIDPILOT_NATS_CA"] == f"{TLS_DIR}/ca.crt"
        user = env["GRIDPILOT_NATS_USER"]
        assert env["GRIDPILOT_NATS_CERT"] == f"{TLS_DIR}/client-{user}.crt", name
        assert env["GRIDPILOT_NATS_KEY"] == f"{TLS_DIR}/client-{user}.key", name
    assert services["simulator"]["environment"]["GRIDPILOT_MQTT_URL"].startswith("mqtts://")
    web = services["web"]
    assert web["environment"]["GRIDPILOT_HTTP_CERT"] == f"{TLS_DIR}/server.crt"
    assert "https://" in web["healthcheck"]["test"][-1]
    gen = (DEPLOY / "compose" / "gen-secrets.sh").read_text()
    assert "certs --data-dir" in gen and "nats1,nats2,nats3,web" in gen


# -- Kubernetes ----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["base", "overlays/example"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(DEPLOY / "k8s" / request.param)


def test_every_manifest_is_valid_for_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert rendered
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validation_catches_a_mistake() -> None:
    doc = render_fallback(DEPLOY / "k8s" / "base")
    deployment = next(d for d in doc if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_fallback_renderer_matches_kustomize() -> None:
    """Without kubectl the tests render with our own code: it must give what kustomize gives."""
    for path in ("base", "overlays/example"):
        ours = render_fallback(DEPLOY / "k8s" / path)
        theirs = render(DEPLOY / "k8s" / path)
        assert sorted(map(_canonical, ours)) == sorted(map(_canonical, theirs))


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)


def test_deployments_are_hardened_probed_and_bounded(rendered: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in rendered}
    assert "Secret" not in kinds, "Secrets are referenced, never part of the manifests"
    assert {"ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "Job"} <= kinds
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    assert {name.replace("_", "-") for name in SERVICES} == set(deployments)
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "gridpilot"
        assert pod["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert "livenessProbe" in c, name
        if name != "web":  # the heartbeat probe, also at startup: time to wait for the model
            health = ["gridpilot", "health", name.replace("-", "_"), "--max-age", "10"]
            assert c["livenessProbe"]["exec"]["command"] == health, name
            startup = c["startupProbe"]
            assert startup["exec"]["command"] == health, name
            assert startup["periodSeconds"] * startup["failureThreshold"] > DEFAULT_MODEL_WAIT_S
        assert {"requests", "limits"} <= set(c["resources"]), name
        args = c["args"]
        assert args[:2] == ["run", name.replace("-", "_")]
        for env in c["env"]:
            assert "value" not in env or "PASSWORD" not in env["name"], (name, env)
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] == "gridpilot-nats":
                assert ref["key"] in PERMISSIONS
    web = deployments["web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/api/health"
    se = deployments["state-estimation"]
    assert se["spec"]["replicas"] >= 2
    # each pod's instance is its name: the probe, in the same container, checks that one
    (se_c,) = se["spec"]["template"]["spec"]["containers"]
    instance = next(e for e in se_c["env"] if e["name"] == "GRIDPILOT_INSTANCE")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_every_connection_is_tls(rendered: list[dict[str, Any]]) -> None:
    config = next(d for d in rendered if d["kind"] == "ConfigMap")["data"]
    assert config["GRIDPILOT_NATS_URL"].startswith("tls://")
    assert config["GRIDPILOT_NATS_CA"] == f"{TLS_DIR}/ca.crt"
    pods = [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in rendered
        if d["kind"] in ("Deployment", "Job")
    ]
    assert len(pods) == len(SERVICES) + 1
    for name, pod in pods:
        (tls_volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert tls_volume["secret"]["secretName"] == "gridpilot-tls"
        (c,) = pod["containers"]
        assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in c["volumeMounts"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        user = env["GRIDPILOT_NATS_USER"]
        assert env["GRIDPILOT_NATS_CERT"] == f"{TLS_DIR}/client-{user}.crt", name
        assert env["GRIDPILOT_NATS_KEY"] == f"{TLS_DIR}/client-{user}.key", name
        if name == "simulator":
            assert env["GRIDPILOT_MQTT_URL"].startswith("mqtts://")
        if name == "web":
            assert env["GRIDPILOT_HTTP_CERT"] == f"{TLS_DIR}/server.crt"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert c[probe]["httpGet"]["scheme"] == "HTTPS"


def test_network_policies_deny_by_default(rendered: list[dict[str, Any]]) -> None:
    policies = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "NetworkPolicy"}
    deny = policies["gridpilot-default-deny"]["spec"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "gridpilot"}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_nats_helm_values() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "nats-values.yaml").read_text())
    config = values["config"]
    assert {k: config["cluster"][k] for k in ("enabled", "replicas")} == {
        "enabled": True,
        "replicas": 3,
    }
    assert config["jetstream"]["enabled"] is True
    assert config["mqtt"]["enabled"] is True
    for listener in (config["nats"], config["cluster"], config["mqtt"]):
        assert listener["tls"]["enabled"] is True
        assert listener["tls"]["secretName"] == "gridpilot-tls"
    assert config["nats"]["tls"]["merge"]["verify"] is True
    assert config["cluster"]["tls"]["merge"]["verify"] is True
    assert values["tlsCA"] == {"enabled": True, "secretName": "gridpilot-tls", "key": "ca.crt"}
    assert "password" not in (DEPLOY / "k8s" / "nats-values.yaml").read_text().lower().replace(
        "no password", ""
    )
