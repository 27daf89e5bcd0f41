"""Tests of the interop Helm chart (deploy/helm/interop), run offline.

Run with scripts/test-chart. Every test renders the chart through Helm's Go
SDK and asserts what a cluster would receive.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from base64 import b64decode
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from conftest import (
    CHART,
    EDGE,
    HASH_A,
    HASH_B,
    NAMESPACE,
    PROVIDER_READERS,
    RELEASE,
    REQUIRED,
    SENTINEL,
    SERVICES,
    everything_on,
    merge,
    validate_object,
)

DEPLOY_DOC = (CHART.parents[2] / "docs" / "deploy.md").read_text() if (CHART.parents[2] / "docs" / "deploy.md").exists() else ""
LINT_INFO_ALLOWED = {"icon is recommended"}


def _lint_findings(report: dict[str, Any]) -> list[str]:
    """Lint messages other than the expected info ones."""
    return [f"{m['severity']}:{m['path']}: {m['error']}" for m in report["messages"]
            if not (m["severity"] == 1 and m["error"] in LINT_INFO_ALLOWED)]


# --- lint -------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, REQUIRED, "everything"], ids=["no-values", "required", "everything-on"])
def test_lint_is_clean(values):
    if values == "everything":
        values = everything_on()
    report = helm.lint(str(CHART), values, kube_version="v1.31.0")
    assert report["errors"] == []
    assert _lint_findings(report) == []


def _fresh_clone(tmp_path) -> Path:
    """The chart as a fresh clone has it: only the files git tracks or would add."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=CHART, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is needed to list the chart's files")
    dest = tmp_path / "interop"
    for rel in listed:
        src = CHART / rel  # git lists paths relative to its working directory
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / src.relative_to(CHART)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def test_lint_strict_passes_on_a_fresh_clone(tmp_path):
    """No subcharts (ADR 22): nothing to download before `helm lint --strict`."""
    clone = _fresh_clone(tmp_path)
    assert not (clone / "charts").exists() and not (clone / "Chart.lock").exists()
    assert "dependencies" not in yaml.safe_load((clone / "Chart.yaml").read_text())
    for values in (REQUIRED, everything_on()):
        report = helm.lint(str(clone), values, strict=True, kube_version="v1.31.0")
        assert report["errors"] == []
        assert _lint_findings(report) == []


def test_nats_and_redis_are_not_subcharts(chart):
    assert chart.dependencies == [] and not chart.metadata.get("dependencies")
    for gone in ({"nats": {"enabled": True}}, {"redis": {"enabled": True}}):
        with pytest.raises(helm.HelmValuesError, match="additional properties"):
            chart.validate_schema(merge(REQUIRED, gone))


# --- every object is valid Kubernetes ---------------------------------------


def test_default_render_validates_and_has_one_of_each_per_service(render):
    r = render(REQUIRED)
    for obj in r.clean():
        validate_object(obj)
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert sorted(o["metadata"]["labels"]["app.kubernetes.io/component"] for o in r.kind(kind)) == sorted(SERVICES)
    # Off by default.
    for kind in ("HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy", "ServiceMonitor",
                 "PrometheusRule", "Job", "Pod", "Secret", "Ingress", "HTTPRoute"):
        assert r.kind(kind) == [], kind


def test_everything_on_render_validates(render):
    r = render(everything_on())
    for obj in r.clean():
        validate_object(obj)
    kinds = {o["kind"] for o in r.objects}
    assert {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject",
        "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ConfigMap", "Job", "Pod", "ServiceAccount",
        "Ingress", "HTTPRoute",
    } <= kinds
    assert len(r.kind("NetworkPolicy")) == 5
    assert len(r.kind("ScaledObject")) == 4
    # KEDA replaces the HPA; ingest has no KEDA and keeps its HPA.
    assert [h["metadata"]["labels"]["app.kubernetes.io/component"] for h in r.kind("HorizontalPodAutoscaler")] == ["ingest"]


def test_validator_rejects_an_invalid_object():
    """The validation used above can fail (guards against a no-op validator)."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(AssertionError):
        validate_object(bad)
    bad_so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [], "bogus": 1}}
    with pytest.raises(AssertionError):
        validate_object(bad_so)
    bad_route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "x"},
                 "spec": {"rules": [{"backendRefs": [{"name": "svc", "port": 70000}],
                                     "timeouts": {"request": "1 hour"}}]}}
    with pytest.raises(AssertionError, match="port|request"):
        validate_object(bad_route)


# --- per-service settings ---------------------------------------------------


@pytest.mark.parametrize("component", SERVICES)
def test_replica_count_changes_only_that_deployment(render, component):
    base = render(REQUIRED).clean()
    changed = render(merge(REQUIRED, {SERVICES[component]: {"replicaCount": 7}})).clean()
    assert len(base) == len(changed)
    diffs = [(a, b) for a, b in zip(base, changed) if a != b]
    assert len(diffs) == 1
    before, after = diffs[0]
    assert after["kind"] == "Deployment"
    assert after["metadata"]["labels"]["app.kubernetes.io/component"] == component
    assert after["spec"]["replicas"] == 7
    before["spec"]["replicas"] = 7
    assert before == after, "only spec.replicas may change"


@pytest.mark.parametrize("component", SERVICES)
def test_scheduling_values_apply_only_to_that_service(render, component):
    values = merge(REQUIRED, {SERVICES[component]: {
        "nodeSelector": {"pool": "x"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "resources": {"requests": {"cpu": "3"}},
        "env": {"INTEROP_FOO": "bar"},
    }})
    r = render(values)
    for other in SERVICES:
        spec = r.deployment(other)["spec"]["template"]["spec"]
        env = r.env(other)
        if other == component:
            assert spec["nodeSelector"] == {"pool": "x"}
            assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]
            assert "podAntiAffinity" in spec["affinity"]
            assert r.container(other)["resources"]["requests"]["cpu"] == "3"
            assert env["INTEROP_FOO"]["value"] == "bar"
        else:
            assert "nodeSelector" not in spec and "tolerations" not in spec and "affinity" not in spec
            assert "INTEROP_FOO" not in env


@pytest.mark.parametrize("component", SERVICES)
def test_disabling_a_service_removes_all_its_objects(render, component):
    r = render(merge(REQUIRED, everything_on(), {SERVICES[component]: {"enabled": False}}))
    for obj in r.objects:
        assert obj["metadata"]["labels"].get("app.kubernetes.io/component") != component, obj["kind"]
    if component in EDGE:
        assert r.kind("Pod") == [], "helm test needs both ingest and delivery"


def test_autoscaling_creates_hpa_and_drops_fixed_replicas(render):
    r = render(merge(REQUIRED, {"routing": {"autoscaling": {
        "enabled": True, "minReplicas": 2, "maxReplicas": 9, "targetCPUUtilizationPercentage": 60}}}))
    hpa = r.one("HorizontalPodAutoscaler", "routing")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{RELEASE}-interop-routing"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 9)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert "replicas" not in r.deployment("routing")["spec"]
    assert r.deployment("spam-scoring")["spec"]["replicas"] == 1


def test_autoscaling_without_any_target_fails(chart):
    with pytest.raises(helm.HelmError, match="routing.autoscaling: set targetCPUUtilizationPercentage"):
        chart.render(merge(REQUIRED, {"routing": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 0}}}),
                     name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("component,stream,consumer", [
    ("spam-scoring", "INTEROP_INGEST", "routing"),
    ("routing", "INTEROP_INGEST", "routing"),
    ("media-transcoding", "INTEROP_MEDIA", "media-transcoding"),
])
def test_keda_scales_on_the_stage_consumer(render, component, stream, consumer):
    r = render(merge(REQUIRED, {SERVICES[component]: {"keda": {"enabled": True, "lagThreshold": 2500000}}}))
    so = r.one("ScaledObject", component)
    validate_object({k: v for k, v in so.items() if k != "__source"})
    assert so["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-interop-{component}"
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == stream
    assert trigger["metadata"]["consumer"] == consumer
    assert trigger["metadata"]["lagThreshold"] == "2500000"  # not 2.5e+06
    assert trigger["metadata"]["natsServerMonitoringEndpoint"] == "nats:8222"
    assert "replicas" not in r.deployment(component)["spec"]
    assert r.kind("HorizontalPodAutoscaler") == []


def test_keda_for_delivery_needs_a_trigger(chart, render):
    with pytest.raises(helm.HelmError, match=r"delivery.keda.enabled needs delivery.keda.stream"):
        chart.render(merge(REQUIRED, {"delivery": {"keda": {"enabled": True}}}), name=RELEASE, namespace=NAMESPACE)
    r = render(merge(REQUIRED, {"delivery": {"keda": {"enabled": True, "extraTriggers": [
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}]}}}))
    assert r.one("ScaledObject", "delivery")["spec"]["triggers"] == [
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}]


def test_pdb_min_available_wins_over_max_unavailable(render):
    r = render(merge(REQUIRED, {"ingest": {"pdb": {"minAvailable": 1}}, "routing": {"pdb": {"enabled": False}}}))
    assert r.one("PodDisruptionBudget", "ingest")["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in r.one("PodDisruptionBudget", "ingest")["spec"]
    assert r.one("PodDisruptionBudget", "delivery")["spec"]["maxUnavailable"] == 1
    assert not [p for p in r.kind("PodDisruptionBudget") if p["metadata"]["labels"]["app.kubernetes.io/component"] == "routing"]


# --- configuration ----------------------------------------------------------


def test_config_map_carries_the_common_environment(render):
    r = render(merge(REQUIRED, {"jetstream": {"replicas": 3}, "log": {"level": "debug"},
                                "otel": {"endpoint": "http://otel:4318", "sampleRatio": 0.5}}))
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-interop-config"]
    assert cm["data"] == {
        "INTEROP_NATS_URL": "nats://nats:4222",
        "INTEROP_REDIS_URL": "redis://redis-master:6379",
        "INTEROP_LOG": "debug",
        "INTEROP_LOG_FORMAT": "json",
        "INTEROP_ADMIN_LISTEN": "0.0.0.0:9090",
        "INTEROP_STREAM_REPLICAS": "3",
        "INTEROP_INBOX_MAX_AGE_SECS": "2592000",
        "INTEROP_INBOX_MAX_PER_RECIPIENT": "10000",
        "INTEROP_INBOX_PARTITIONS": "1",
        "INTEROP_ALLOW_PLAINTEXT": "true",
        "INTEROP_AUTH_MAX_FAILURES_PER_ADDRESS": "0",
        "INTEROP_AUTH_MAX_FAILURES_PER_PROVIDER": "100",
        "INTEROP_AUTH_FAILURE_WINDOW_SECS": "60",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
        "INTEROP_TRACE_SAMPLE_RATIO": "0.5",
    }
    for component in SERVICES:
        c = r.container(component)
        assert c["command"] == [component]
        assert c["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-interop-config"}}]
        assert r.env(component)["OTEL_SERVICE_NAME"]["value"] == component


def test_shutdown_grace_fits_inside_the_termination_grace_period_after_the_prestop_sleep(render):
    r = render(merge(REQUIRED, {"routing": {"terminationGracePeriodSeconds": 90},
                                "ingest": {"env": {"INTEROP_SHUTDOWN_GRACE_SECS": "7"}},
                                "delivery": {"preStopSleepSeconds": 10}}))
    # grace - 5 - preStop sleep (5 s for the services behind a Service port, none for the NATS workers).
    expected = {"ingest": "7", "spam-scoring": "25", "routing": "85", "media-transcoding": "50", "delivery": "45"}
    sleeps = {"ingest": 5, "spam-scoring": 0, "routing": 0, "media-transcoding": 5, "delivery": 10}
    for component, grace in expected.items():
        names = [e["name"] for e in r.container(component)["env"]]
        assert names.count("INTEROP_SHUTDOWN_GRACE_SECS") == 1, component
        assert r.env(component)["INTEROP_SHUTDOWN_GRACE_SECS"]["value"] == grace, component
        spec = r.deployment(component)["spec"]["template"]["spec"]
        assert int(grace) + sleeps[component] < spec["terminationGracePeriodSeconds"]
        lifecycle = r.container(component).get("lifecycle")
        if sleeps[component]:
            assert lifecycle == {"preStop": {"exec": {"command": ["sleep", str(sleeps[component])]}}}, component
        else:
            assert lifecycle is None, component


def test_lifecycle_hooks_replace_the_default_prestop_and_a_too_long_sleep_fails(chart, render):
    hook = {"exec": {"command": ["/bin/sh", "-c", "sleep 3"]}}
    r = render(merge(REQUIRED, {"ingest": {"lifecycleHooks": {"preStop": hook}},
                                "delivery": {"lifecycleHooks": {"postStart": {"exec": {"command": ["true"]}}}},
                                "routing": {"preStopSleepSeconds": 2}}))
    assert r.container("ingest")["lifecycle"] == {"preStop": hook}
    # A postStart alone keeps the default preStop sleep.
    assert r.container("delivery")["lifecycle"] == {"postStart": {"exec": {"command": ["true"]}},
                                                    "preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert r.container("routing")["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "2"]}}}
    with pytest.raises(helm.HelmError, match=r"ingest.preStopSleepSeconds \(30\) leaves no time to drain"):
        chart.render(merge(REQUIRED, {"ingest": {"preStopSleepSeconds": 30}}), name=RELEASE, namespace=NAMESPACE)


def test_edge_services_listen_and_mount_the_provider_registry(render):
    r = render(merge(REQUIRED, {"ingest": {"containerPort": 18080}}))
    for component, env_name, port in [("ingest", "INTEROP_INGEST_LISTEN", 18080), ("delivery", "INTEROP_DELIVERY_LISTEN", 8081)]:
        env = r.env(component)
        assert env[env_name]["value"] == f"0.0.0.0:{port}"
        assert env["INTEROP_PROVIDERS_FILE"]["value"] == "/etc/interop/providers/providers.toml"
        spec = r.deployment(component)["spec"]["template"]["spec"]
        [vol] = [v for v in spec["volumes"] if v["name"] == "providers"]
        assert vol["secret"]["secretName"] == "interop-providers"
        assert vol["secret"]["items"] == [{"key": "providers.toml", "path": "providers.toml"}]
        assert {"name": "providers", "mountPath": "/etc/interop/providers", "readOnly": True} in r.container(component)["volumeMounts"]
        ports = {p["name"]: p["containerPort"] for p in r.container(component)["ports"]}
        assert ports == {"ws": port, "admin": 9090}
        svc_ports = {p["name"]: p["targetPort"] for p in r.one("Service", component)["spec"]["ports"]}
        assert svc_ports == {"ws": "ws", "admin": "admin"}
    for component in SERVICES.keys() - PROVIDER_READERS:
        assert "INTEROP_PROVIDERS_FILE" not in r.env(component)
        assert [p["name"] for p in r.one("Service", component)["spec"]["ports"]] == ["admin"]


def test_media_transcoding_exposes_its_media_api_and_reads_the_provider_registry(render):
    r = render(merge(REQUIRED, {"mediaTranscoding": {"containerPort": 18082, "service": {"port": 80}}}))
    env = r.env("media-transcoding")
    assert env["INTEROP_MEDIA_TRANSCODING_LISTEN"]["value"] == "0.0.0.0:18082"
    assert env["INTEROP_PROVIDERS_FILE"]["value"] == "/etc/interop/providers/providers.toml"
    assert {"name": "providers", "mountPath": "/etc/interop/providers", "readOnly": True} in r.container("media-transcoding")["volumeMounts"]
    ports = {p["name"]: p["containerPort"] for p in r.container("media-transcoding")["ports"]}
    assert ports == {"media": 18082, "admin": 9090}
    svc = {p["name"]: (p["port"], p["targetPort"]) for p in r.one("Service", "media-transcoding")["spec"]["ports"]}
    assert svc == {"media": (80, "media"), "admin": (9090, "admin")}
    # Not an edge service: no TLS mounts even when the edge has them.
    r = render(merge(REQUIRED, {"tls": {"existingSecret": "gw-tls"}}))
    assert "INTEROP_TLS_CERT" not in r.env("media-transcoding")


def test_provider_admin_api_port_and_token(chart, render):
    assert "INTEROP_ADMIN_TOKEN_FILE" not in render(REQUIRED).env("ingest")
    r = render(merge(REQUIRED, {"ingest": {"adminApi": {"enabled": True, "port": 18090, "existingSecret": "admin-token",
                                                         "existingSecretKey": "token"}}}))
    env = r.env("ingest")
    assert env["INTEROP_INGEST_ADMIN_API_LISTEN"]["value"] == "0.0.0.0:18090"
    assert env["INTEROP_ADMIN_TOKEN_FILE"]["value"] == "/etc/interop/admin-api/admin-token"
    spec = r.deployment("ingest")["spec"]["template"]["spec"]
    [vol] = [v for v in spec["volumes"] if v["name"] == "admin-api"]
    assert vol["secret"]["secretName"] == "admin-token"
    assert vol["secret"]["items"] == [{"key": "token", "path": "admin-token"}]
    assert {"name": "admin-api", "mountPath": "/etc/interop/admin-api", "readOnly": True} in r.container("ingest")["volumeMounts"]
    assert {"name": "provider-admin", "containerPort": 18090, "protocol": "TCP"} in r.container("ingest")["ports"]
    svc = {p["name"]: p["port"] for p in r.one("Service", "ingest")["spec"]["ports"]}
    assert svc["provider-admin"] == 18090
    for other in SERVICES.keys() - {"ingest"}:
        assert "INTEROP_ADMIN_TOKEN_FILE" not in r.env(other)
        assert "provider-admin" not in {p["name"] for p in r.container(other)["ports"]}
    for obj in r.clean():
        validate_object(obj)
    # The token has no default: enabling without a Secret fails, saying what to set.
    with pytest.raises(helm.HelmError) as err:
        chart.render(merge(REQUIRED, {"ingest": {"adminApi": {"enabled": True}}}), name=RELEASE, namespace=NAMESPACE)
    assert "ingest.adminApi.existingSecret" in str(err.value)


def test_key_transparency_mounts_the_vrf_key_into_ingest_only(chart, render):
    assert "INTEROP_INGEST_KT_VRF_KEY_FILE" not in render(REQUIRED).env("ingest")
    r = render(merge(REQUIRED, {"ingest": {"keyTransparency": {"enabled": True, "existingSecret": "kt",
                                                                "existingSecretKey": "vrf", "epochIntervalSecs": 10}}}))
    env = r.env("ingest")
    assert env["INTEROP_INGEST_KT_VRF_KEY_FILE"]["value"] == "/etc/interop/key-transparency/vrf-key"
    assert env["INTEROP_INGEST_KT_EPOCH_INTERVAL_SECS"]["value"] == "10"
    spec = r.deployment("ingest")["spec"]["template"]["spec"]
    [vol] = [v for v in spec["volumes"] if v["name"] == "key-transparency"]
    assert vol["secret"]["secretName"] == "kt"
    assert vol["secret"]["items"] == [{"key": "vrf", "path": "vrf-key"}]
    assert {"name": "key-transparency", "mountPath": "/etc/interop/key-transparency",
            "readOnly": True} in r.container("ingest")["volumeMounts"]
    for other in SERVICES.keys() - {"ingest"}:
        assert "INTEROP_INGEST_KT_VRF_KEY_FILE" not in r.env(other)
    for obj in r.clean():
        validate_object(obj)
    with pytest.raises(helm.HelmError) as err:
        chart.render(merge(REQUIRED, {"ingest": {"keyTransparency": {"enabled": True}}}), name=RELEASE, namespace=NAMESPACE)
    assert "ingest.keyTransparency.existingSecret" in str(err.value)
    with pytest.raises(helm.HelmError):
        chart.render(merge(REQUIRED, {"ingest": {"keyTransparency": {"epochIntervalSecs": 0}}}), name=RELEASE,
                     namespace=NAMESPACE)


def test_edge_tls_certificate_and_client_ca_are_mounted_into_ingest_and_delivery(chart, render):
    assert "INTEROP_TLS_CERT" not in render(REQUIRED).env("ingest")
    r = render(merge(REQUIRED, {"tls": {"existingSecret": "gw-tls",
                                        "clientCa": {"existingSecret": "providers-ca", "existingSecretKey": "bundle.pem"}}}))
    for component in EDGE:
        env = r.env(component)
        assert env["INTEROP_TLS_CERT"]["value"] == "/etc/interop/tls/tls.crt"
        assert env["INTEROP_TLS_KEY"]["value"] == "/etc/interop/tls/tls.key"
        assert env["INTEROP_TLS_CLIENT_CA"]["value"] == "/etc/interop/client-ca/ca.crt"
        vols = {v["name"]: v["secret"] for v in r.deployment(component)["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        assert vols["tls"]["secretName"] == "gw-tls"
        assert vols["tls"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
        assert vols["client-ca"] == {"secretName": "providers-ca", "defaultMode": 0o440,
                                     "items": [{"key": "bundle.pem", "path": "ca.crt"}]}
        mounts = r.container(component)["volumeMounts"]
        assert {"name": "tls", "mountPath": "/etc/interop/tls", "readOnly": True} in mounts
        assert {"name": "client-ca", "mountPath": "/etc/interop/client-ca", "readOnly": True} in mounts
    for component in SERVICES.keys() - EDGE:
        assert "INTEROP_TLS_CERT" not in r.env(component)
    for obj in r.clean():
        validate_object(obj)
    # A certificate without a client CA: TLS, no mutual TLS.
    r = render(merge(REQUIRED, {"tls": {"existingSecret": "gw-tls"}}))
    assert "INTEROP_TLS_CERT" in r.env("ingest") and "INTEROP_TLS_CLIENT_CA" not in r.env("ingest")
    # A client CA needs the endpoints to serve TLS themselves.
    with pytest.raises(helm.HelmError) as err:
        chart.render(merge(REQUIRED, {"tls": {"clientCa": {"existingSecret": "providers-ca"}}}), name=RELEASE, namespace=NAMESPACE)
    assert "tls.existingSecret" in str(err.value)


def test_provider_registry_renders_capabilities_and_client_certificates(render):
    r = render({"providers": {"registry": [
        {"id": "signal", "displayName": "Signal", "encryption": "e2ee", "tokenSha256": [HASH_A],
         "capabilities": {"content": ["text", "media", "read-receipt"], "mediaFormats": ["image/jpeg"]},
         "clientCertSha256": [HASH_B.upper()], "requireClientCert": True},
        {"id": "home", "displayName": "Home", "encryption": "e2ee", "tokenSha256": [],
         "capabilities": {"content": ["text"]}},
        {"id": "xmpp", "displayName": "XMPP", "encryption": "transport-only", "tokenSha256": [HASH_B]},
    ]}})
    [secret] = r.kind("Secret")
    registry = tomllib.loads(b64decode(secret["data"]["providers.toml"]).decode())
    signal, home, xmpp = registry["providers"]
    assert signal["capabilities"] == {"content": ["text", "media", "read-receipt"], "media_formats": ["image/jpeg"]}
    assert signal["client_cert_sha256"] == [HASH_B]
    assert signal["require_client_cert"] is True
    # Lists not given are left out, so the services' defaults apply.
    assert home["capabilities"] == {"content": ["text"]}
    assert "capabilities" not in xmpp and "client_cert_sha256" not in xmpp and "require_client_cert" not in xmpp


def _checksums(r) -> dict[str, dict[str, str]]:
    return {c: r.deployment(c)["spec"]["template"]["metadata"]["annotations"] for c in SERVICES}


def test_checksum_config_changes_with_config_values_only(render):
    base = _checksums(render(REQUIRED))
    for sums in base.values():
        assert re.fullmatch(r"[0-9a-f]{64}", sums["checksum/config"])
    for change in ({"log": {"level": "debug"}}, {"jetstream": {"replicas": 3}},
                   {"externalNats": {"url": "nats://other:4222"}}, {"otel": {"endpoint": "http://otel:4318"}},
                   {"jetstream": {"inboxMaxAgeSeconds": 86400}}, {"jetstream": {"inboxPartitions": 8}}):
        changed = _checksums(render(merge(REQUIRED, change)))
        for c in SERVICES:
            assert changed[c]["checksum/config"] != base[c]["checksum/config"], (change, c)
    # Scaling is not configuration: no rollout of the other pods.
    scaled = _checksums(render(merge(REQUIRED, {"routing": {"replicaCount": 4}})))
    assert scaled == base


def test_checksum_providers_rolls_only_the_services_reading_the_registry(render):
    def values(hashes):
        return {"providers": {"registry": [
            {"id": "signal", "displayName": "Signal", "encryption": "e2ee", "tokenSha256": hashes}]}}
    one = _checksums(render(values([HASH_A])))
    two = _checksums(render(values([HASH_A, HASH_B])))
    for c in SERVICES:
        if c in PROVIDER_READERS:
            assert one[c]["checksum/providers"] != two[c]["checksum/providers"]
        else:
            assert "checksum/providers" not in one[c]
        assert one[c]["checksum/config"] == two[c]["checksum/config"]


def test_jetstream_replicas_reach_the_services(render):
    r = render(merge(REQUIRED, {"jetstream": {"replicas": 3}}))
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
    assert cm["data"]["INTEROP_STREAM_REPLICAS"] == "3"
    assert "WARNING: jetstream.replicas" not in r.notes
    assert "WARNING: jetstream.replicas=1" in render(REQUIRED).notes


def test_store_partitions_reach_every_service(render):
    r = render(merge(REQUIRED, {"jetstream": {"replicas": 3, "inboxPartitions": 8}}))
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
    assert cm["data"]["INTEROP_INBOX_PARTITIONS"] == "8"
    for component in SERVICES:
        assert r.container(component)["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    assert "jetstream.inboxPartitions=1" not in r.notes
    # Replicated but one store stream: the notes say so.
    assert "NOTE: jetstream.inboxPartitions=1" in render(merge(REQUIRED, {"jetstream": {"replicas": 3}})).notes
    assert "jetstream.inboxPartitions=1" not in render(REQUIRED).notes


def test_external_redis_password_from_a_secret(render):
    r = render(merge(REQUIRED, {"externalRedis": {"url": "rediss://cache.example:6380/2", "existingSecret": "redis-auth",
                                                   "existingSecretPasswordKey": "pw"}}))
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
    for component in SERVICES:
        env = r.env(component)
        assert env["INTEROP_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "pw"}
        # The URL stays the plain one from the ConfigMap: the service sets the password itself.
        assert "INTEROP_REDIS_URL" not in env
        assert "INTEROP_REDIS_USERNAME" not in env
    assert cm["data"]["INTEROP_REDIS_URL"] == "rediss://cache.example:6380/2"
    assert "INTEROP_REDIS_PASSWORD" not in render(REQUIRED).env("ingest")
    r = render(merge(REQUIRED, {"externalRedis": {"existingSecret": "redis-auth", "existingSecretUsernameKey": "user"}}))
    assert r.env("routing")["INTEROP_REDIS_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "user"}


# --- images and extension points ---------------------------------------------


def _image(r, component):
    return r.container(component)["image"]


def test_default_images_slim_for_four_services_and_interop_media_for_transcoding(render):
    r = render(merge(REQUIRED, {"tests": {"existingSecret": "t"}, "loadtest": {"enabled": True, "scenario": "x"}}))
    for component in SERVICES:
        want = "interop-media:0.1.0" if component == "media-transcoding" else "interop:0.1.0"
        assert _image(r, component) == want, component
        assert r.container(component)["imagePullPolicy"] == "IfNotPresent"
    assert r.one("Pod", "tests")["spec"]["containers"][0]["image"] == "interop:0.1.0"
    assert r.one("Job", "loadtest")["spec"]["template"]["spec"]["containers"][0]["image"] == "interop:0.1.0"


def test_image_composition_registry_tag_and_digest(render):
    digest, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    r = render(merge(REQUIRED, {
        "image": {"registry": "registry.example.com/", "tag": "1.2.3", "digest": digest},
        "routing": {"image": {"tag": "1.2.4", "pullPolicy": "Always"}},
        "delivery": {"image": {"registry": "other.example.com", "repository": "team/delivery", "digest": other, "tag": "9"}},
    }))
    # The top-level digest pins the top-level repository...
    assert _image(r, "ingest") == f"registry.example.com/interop@{digest}"
    # ...but never another repository, nor a service with a tag of its own.
    assert _image(r, "media-transcoding") == "registry.example.com/interop-media:1.2.3"
    assert _image(r, "routing") == "registry.example.com/interop:1.2.4"
    assert r.container("routing")["imagePullPolicy"] == "Always"
    # A service's digest wins over its tag.
    assert _image(r, "delivery") == f"other.example.com/team/delivery@{other}"
    # global.imageRegistry wins over every registry.
    r = render(merge(REQUIRED, {"global": {"imageRegistry": "mirror.local:5000"},
                                "delivery": {"image": {"registry": "other.example.com"}}, "tests": {"existingSecret": "t"}}))
    for component in SERVICES:
        assert _image(r, component).startswith("mirror.local:5000/"), component
    assert r.one("Pod", "tests")["spec"]["containers"][0]["image"] == "mirror.local:5000/interop:0.1.0"


def test_extension_points_reach_only_their_service(render):
    values = merge(REQUIRED, {"routing": {
        "extraEnvVars": [{"name": "INTEROP_RELEASE", "value": "{{ .Release.Name }}"},
                         {"name": "INTEROP_SHUTDOWN_GRACE_SECS", "value": "3"}],
        "env": {"INTEROP_FOO": "bar"},
        "extraEnvVarsCM": "{{ .Release.Name }}-extra", "extraEnvVarsSecret": "routing-secret-env",
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "initContainers": [{"name": "init", "image": "busybox", "command": ["true"]}],
        "sidecars": [{"name": "proxy", "image": "envoy", "args": ["--release={{ .Release.Name }}"]}],
    }})
    r = render(values)
    spec = r.deployment("routing")["spec"]["template"]["spec"]
    containers = spec["containers"]
    assert [c["name"] for c in containers] == ["routing", "proxy"]
    assert containers[1]["args"] == [f"--release={RELEASE}"]
    assert spec["initContainers"] == [{"name": "init", "image": "busybox", "command": ["true"]}]
    main = containers[0]
    env = [e for e in main["env"]]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    by_name = {e["name"]: e for e in env}
    assert by_name["INTEROP_RELEASE"]["value"] == RELEASE
    # The user's value replaces the chart's, in the user's place (last).
    assert by_name["INTEROP_SHUTDOWN_GRACE_SECS"]["value"] == "3"
    assert names[-3:] == ["INTEROP_FOO", "INTEROP_RELEASE", "INTEROP_SHUTDOWN_GRACE_SECS"]
    assert main["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-interop-config"}},
                               {"configMapRef": {"name": f"{RELEASE}-extra"}},
                               {"secretRef": {"name": "routing-secret-env"}}]
    assert {"name": "scratch", "emptyDir": {}} in spec["volumes"]
    assert {"name": "scratch", "mountPath": "/scratch"} in main["volumeMounts"]
    for other in SERVICES.keys() - {"routing"}:
        ospec = r.deployment(other)["spec"]["template"]["spec"]
        assert len(ospec["containers"]) == 1 and "initContainers" not in ospec
        assert "INTEROP_RELEASE" not in r.env(other)
        assert len(r.container(other)["envFrom"]) == 1
    for obj in r.clean():
        validate_object(obj)


def test_an_env_var_set_twice_fails(chart):
    with pytest.raises(helm.HelmError, match="the environment variable INTEROP_X is set twice"):
        chart.render(merge(REQUIRED, {"ingest": {"env": {"INTEROP_X": "1"}, "extraEnvVars": [{"name": "INTEROP_X", "value": "2"}]}}),
                     name=RELEASE, namespace=NAMESPACE)


# --- Ingress and HTTPRoute -----------------------------------------------------

HOSTS = {"ingest": "ingest.example.com", "delivery": "delivery.example.com", "media": "media.example.com"}
EXPOSE_ALL = {key: {"hosts": [host]} for key, host in HOSTS.items()}
ROUTE_ALL = {key: {"hostnames": [host]} for key, host in HOSTS.items()}
PARENT = [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]


def test_ingress_exposes_both_websockets_and_the_media_api(render):
    r = render(merge(REQUIRED, {"ingress": dict(EXPOSE_ALL, enabled=True, className="nginx", preset="ingress-nginx",
                                                tls={"secretName": "gw-tls"}, labels={"team": "edge"},
                                                annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"},
                                                media={"hosts": ["media.example.com", "ingest.example.com"],
                                                       "annotations": {"x/only-media": "1"}})}))
    for obj in r.clean():
        validate_object(obj)
    expected = {"ingest": ("ingest.example.com", "/v1/ws", "Exact", "ws"),
                "delivery": ("delivery.example.com", "/v1/ws", "Exact", "ws"),
                "media-transcoding": ("media.example.com", "/v1/media", "Prefix", "media")}
    assert sorted(i["metadata"]["labels"]["app.kubernetes.io/component"] for i in r.kind("Ingress")) == sorted(expected)
    for component, (host, path, path_type, port) in expected.items():
        ing = r.one("Ingress", component)
        assert ing["metadata"]["name"] == f"{RELEASE}-interop-{component}"
        assert ing["metadata"]["labels"]["team"] == "edge"
        assert ing["spec"]["ingressClassName"] == "nginx"
        rule = ing["spec"]["rules"][0]
        assert rule["host"] == host
        [p] = rule["http"]["paths"]
        assert (p["path"], p["pathType"]) == (path, path_type)
        assert p["backend"]["service"] == {"name": f"{RELEASE}-interop-{component}", "port": {"name": port}}
        assert ing["spec"]["tls"] == [{"secretName": "gw-tls", "hosts": [r_["host"] for r_ in ing["spec"]["rules"]]}]
        ann = ing["metadata"]["annotations"]
        # Yours win over the preset's.
        assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
        if component == "media-transcoding":
            assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "100m"  # the 100 MiB media limit
            assert ann["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
            assert ann["x/only-media"] == "1"
            assert [x["host"] for x in ing["spec"]["rules"]] == ["media.example.com", "ingest.example.com"]
        else:
            assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
            assert "nginx.ingress.kubernetes.io/proxy-body-size" not in ann and "x/only-media" not in ann
    # An endpoint without hosts is not exposed, nor one whose service is off; no TLS section without a Secret.
    r = render(merge(REQUIRED, {"ingress": {"enabled": True, "ingest": {"hosts": ["i.example.com"]},
                                            "media": {"hosts": ["m.example.com"]}},
                                "mediaTranscoding": {"enabled": False}}))
    [ing] = r.kind("Ingress")
    assert ing["metadata"]["labels"]["app.kubernetes.io/component"] == "ingest"
    assert "tls" not in ing["spec"] and "ingressClassName" not in ing["spec"] and "annotations" not in ing["metadata"]


@pytest.mark.parametrize("preset,websocket,media", [
    ("traefik", {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
                 "traefik.ingress.kubernetes.io/router.tls": "true"},
     {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
      "traefik.ingress.kubernetes.io/router.tls": "true"}),
    ("haproxy", {"haproxy.org/backend-config-snippet": "timeout tunnel 1h"}, {"haproxy.org/timeout-server": "10m"}),
    ("none", None, None),
])
def test_ingress_presets(render, preset, websocket, media):
    r = render(merge(REQUIRED, {"ingress": dict(EXPOSE_ALL, enabled=True, preset=preset)}))
    assert r.one("Ingress", "delivery")["metadata"].get("annotations") == websocket
    assert r.one("Ingress", "media-transcoding")["metadata"].get("annotations") == media


def test_httproutes_attach_each_endpoint_to_the_gateway_with_websocket_timeouts(render):
    r = render(merge(REQUIRED, {"httpRoute": dict(ROUTE_ALL, enabled=True, parentRefs=PARENT,
                                                  annotations={"a": "b"},
                                                  timeouts={"media": {"request": "15m", "backendRequest": "10m"}})}))
    for obj in r.clean():
        validate_object(obj)
    expected = {"ingest": ("ingest.example.com", "Exact", "/v1/ws", 8080, {"request": "0s"}),
                "delivery": ("delivery.example.com", "Exact", "/v1/ws", 8081, {"request": "0s"}),
                "media-transcoding": ("media.example.com", "PathPrefix", "/v1/media", 8082,
                                      {"request": "15m", "backendRequest": "10m"})}
    for component, (host, path_type, path, port, timeouts) in expected.items():
        route = r.one("HTTPRoute", component)
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["metadata"]["annotations"] == {"a": "b"}
        spec = route["spec"]
        assert spec["parentRefs"] == PARENT and spec["hostnames"] == [host]
        [rule] = spec["rules"]
        assert rule["matches"] == [{"path": {"type": path_type, "value": path}}]
        assert rule["backendRefs"] == [{"name": f"{RELEASE}-interop-{component}", "port": port}]
        assert rule["timeouts"] == timeouts
    # {} leaves the implementation's default.
    r = render(merge(REQUIRED, {"httpRoute": {"enabled": True, "parentRefs": PARENT, "ingest": ROUTE_ALL["ingest"],
                                              "timeouts": {"websocket": {"request": None}}}}))
    assert "timeouts" not in r.one("HTTPRoute", "ingest")["spec"]["rules"][0]


@pytest.mark.parametrize("values,message", [
    ({"ingress": {"enabled": True}}, "ingress.enabled needs a host: set ingress.ingest.hosts"),
    ({"httpRoute": {"enabled": True, "parentRefs": PARENT}}, "httpRoute.enabled needs a host: set httpRoute.ingest.hostnames"),
    ({"httpRoute": {"enabled": True, "media": {"hostnames": ["m.example.com"]}}}, "httpRoute.enabled needs httpRoute.parentRefs"),
    ({"ingress": {"enabled": True, "ingest": {"hosts": ["gw.example.com"]}, "delivery": {"hosts": ["gw.example.com"]}}},
     "gw.example.com is a host of both ingest and delivery"),
    ({"ingress": {"enabled": True, "ingest": {"hosts": ["i.example.com"]}}, "tls": {"existingSecret": "gw-tls"}},
     "but tls.existingSecret makes them serve TLS themselves"),
    ({"httpRoute": {"enabled": True, "parentRefs": PARENT, "delivery": {"hostnames": ["d.example.com"]}},
      "tls": {"terminatedInFront": False}}, "set tls.terminatedInFront=true"),
])
def test_exposure_settings_that_cannot_work_fail(chart, values, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render(merge(REQUIRED, values), name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)


def test_only_the_media_api_may_be_exposed_while_the_edge_serves_tls_itself(render):
    r = render(merge(REQUIRED, {"tls": {"existingSecret": "gw-tls", "terminatedInFront": False},
                                "ingress": {"enabled": True, "media": {"hosts": ["m.example.com"]}},
                                "httpRoute": {"enabled": True, "parentRefs": PARENT, "media": {"hostnames": ["m.example.com"]}}}))
    assert [i["metadata"]["name"] for i in r.kind("Ingress")] == [f"{RELEASE}-interop-media-transcoding"]
    assert [i["metadata"]["name"] for i in r.kind("HTTPRoute")] == [f"{RELEASE}-interop-media-transcoding"]


# --- NATS, Redis and OTLP: credentials and TLS from Secrets -------------------


def _volumes(spec) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec.get("volumes", [])}


def _mounts(container) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def test_no_configmap_holds_a_secret_with_everything_on(render):
    r = render(everything_on())
    configmaps = r.kind("ConfigMap")
    assert configmaps
    for cm in configmaps:
        text = json.dumps(cm.get("data", {})) + json.dumps(cm.get("binaryData", {}))
        for sentinel in SENTINEL.values():
            assert sentinel not in text, (cm["metadata"]["name"], sentinel)
        settings = {k: v for k, v in cm.get("data", {}).items() if not k.endswith(".json")}  # not the dashboard
        assert not re.search(r"(?i)password|passwd|secret", json.dumps(settings)), cm["metadata"]["name"]
        # No URL with userinfo (user:password@host).
        assert not re.search(r"[a-z][a-z0-9+.-]*://[^/\s\"@]*@", text), cm["metadata"]["name"]
    [config] = [c for c in configmaps if c["metadata"]["name"] == f"{RELEASE}-interop-config"]
    assert config["data"]["INTEROP_NATS_URL"] == "tls://nats.messaging:4222"
    assert config["data"]["INTEROP_REDIS_URL"] == "rediss://redis-master.cache:6379/0"
    assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel-collector.observability:4318"


NATS_REDIS_OTEL_ENV = {
    "INTEROP_NATS_USER": {"secretKeyRef": {"name": SENTINEL["natsAuthSecret"], "key": SENTINEL["natsUserKey"]}},
    "INTEROP_NATS_PASSWORD": {"secretKeyRef": {"name": SENTINEL["natsAuthSecret"], "key": SENTINEL["natsPasswordKey"]}},
    "INTEROP_NATS_TLS_CA_FILE": "/etc/interop/nats-tls/ca.crt",
    "INTEROP_NATS_TLS_CERT_FILE": "/etc/interop/nats-tls/tls.crt",
    "INTEROP_NATS_TLS_KEY_FILE": "/etc/interop/nats-tls/tls.key",
    "INTEROP_REDIS_USERNAME": {"secretKeyRef": {"name": SENTINEL["redisSecret"], "key": SENTINEL["redisUserKey"]}},
    "INTEROP_REDIS_PASSWORD": {"secretKeyRef": {"name": SENTINEL["redisSecret"], "key": SENTINEL["redisPasswordKey"]}},
    "INTEROP_REDIS_TLS_CA_FILE": "/etc/interop/redis-tls/ca.crt",
    "INTEROP_REDIS_TLS_CERT_FILE": "/etc/interop/redis-tls/tls.crt",
    "INTEROP_REDIS_TLS_KEY_FILE": "/etc/interop/redis-tls/tls.key",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/interop/otel-tls/ca.crt",
}


def _tls_items(prefix):
    return [{"key": SENTINEL[f"{prefix}CaKey"], "path": "ca.crt"}, {"key": SENTINEL[f"{prefix}CertKey"], "path": "tls.crt"},
            {"key": SENTINEL[f"{prefix}KeyKey"], "path": "tls.key"}]


def _assert_env(env, expected):
    for name, want in expected.items():
        assert name in env, name
        if isinstance(want, str):
            assert env[name]["value"] == want, name
        else:
            assert env[name]["valueFrom"] == want, name


def test_credentials_and_tls_files_reach_every_service_and_the_loadtest_job(render):
    r = render(everything_on())
    for component in SERVICES:
        _assert_env(r.env(component), NATS_REDIS_OTEL_ENV)
        spec = r.deployment(component)["spec"]["template"]["spec"]
        vols, mounts = _volumes(spec), _mounts(r.container(component))
        assert vols["nats-tls"]["secret"] == {"secretName": SENTINEL["natsTlsSecret"], "defaultMode": 0o440,
                                              "items": _tls_items("nats")}
        assert vols["redis-tls"]["secret"] == {"secretName": SENTINEL["redisTlsSecret"], "defaultMode": 0o440,
                                               "items": _tls_items("redis")}
        assert vols["otel-tls"]["secret"] == {"secretName": SENTINEL["otelCaSecret"], "defaultMode": 0o440,
                                              "items": [{"key": SENTINEL["otelCaKey"], "path": "ca.crt"}]}
        for name, path in (("nats-tls", "/etc/interop/nats-tls"), ("redis-tls", "/etc/interop/redis-tls"),
                           ("otel-tls", "/etc/interop/otel-tls")):
            assert mounts[name] == {"name": name, "mountPath": path, "readOnly": True}, (component, name)
        assert "nats-auth" not in vols  # user/password come as secretKeyRef variables
    # The load generator talks to NATS for `--ceiling`, never to Redis.
    [job_c] = r.one("Job", "loadtest")["spec"]["template"]["spec"]["containers"]
    job_env = {e["name"]: e for e in job_c["env"]}
    assert job_env["INTEROP_NATS_URL"]["value"] == "tls://nats.messaging:4222"
    _assert_env(job_env, {k: v for k, v in NATS_REDIS_OTEL_ENV.items() if k.startswith("INTEROP_NATS")})
    assert not any(k.startswith("INTEROP_REDIS") for k in job_env)
    job_spec = r.one("Job", "loadtest")["spec"]["template"]["spec"]
    assert _volumes(job_spec)["nats-tls"]["secret"]["items"] == _tls_items("nats")
    assert _mounts(job_c)["nats-tls"]["readOnly"] is True
    # The helm test pod only speaks WebSocket to ingest and delivery.
    [pod_c] = r.one("Pod", "tests")["spec"]["containers"]
    assert not any(e["name"].startswith(("INTEROP_NATS", "INTEROP_REDIS")) for e in pod_c["env"])


@pytest.mark.parametrize("auth,env_name,key,path", [
    ({"type": "creds", "existingSecret": "nats-user", "credsKey": "user.creds"},
     "INTEROP_NATS_CREDS_FILE", "user.creds", "nats.creds"),
    ({"type": "nkey", "existingSecret": "nats-user"}, "INTEROP_NATS_NKEY_FILE", "nkey.seed", "nkey.seed"),
])
def test_nats_creds_and_nkey_files_are_mounted_from_the_secret(render, auth, env_name, key, path):
    r = render(merge(REQUIRED, {"externalNats": {"auth": auth}}))
    for component in SERVICES:
        env = r.env(component)
        assert env[env_name]["value"] == f"/etc/interop/nats-auth/{path}"
        assert "INTEROP_NATS_PASSWORD" not in env and "INTEROP_NATS_TLS_CA_FILE" not in env
        vol = _volumes(r.deployment(component)["spec"]["template"]["spec"])["nats-auth"]
        assert vol["secret"] == {"secretName": "nats-user", "defaultMode": 0o440, "items": [{"key": key, "path": path}]}
        assert _mounts(r.container(component))["nats-auth"] == {
            "name": "nats-auth", "mountPath": "/etc/interop/nats-auth", "readOnly": True}
    for obj in r.clean():
        validate_object(obj)


def test_tls_without_a_client_certificate_mounts_only_the_ca(render):
    r = render(merge(REQUIRED, {"externalNats": {"tls": {"enabled": True, "existingSecret": "nats-ca"}},
                                "externalRedis": {"url": "rediss://r:6379", "tls": {"enabled": True, "existingSecret": "redis-ca"}},
                                "otel": {"endpoint": "https://otel:4318", "tls": {"existingConfigMap": "otel-ca"}}}))
    env = r.env("routing")
    assert env["INTEROP_NATS_TLS_CA_FILE"]["value"] == "/etc/interop/nats-tls/ca.crt"
    assert "INTEROP_NATS_TLS_CERT_FILE" not in env and "INTEROP_REDIS_TLS_KEY_FILE" not in env
    vols = _volumes(r.deployment("routing")["spec"]["template"]["spec"])
    assert vols["redis-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert vols["otel-tls"]["configMap"] == {"name": "otel-ca", "defaultMode": 0o440, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    # A tls:// URL with a public CA needs nothing mounted; neither does a rediss:// URL.
    r = render(merge(REQUIRED, {"externalNats": {"url": "tls://nats.example:4222", "tls": {"enabled": True}},
                                "externalRedis": {"url": "rediss://r:6379", "tls": {"enabled": True}}}))
    assert not {"nats-tls", "redis-tls"} & _volumes(r.deployment("routing")["spec"]["template"]["spec"]).keys()
    # Nothing by default.
    r = render(REQUIRED)
    assert not any(e["name"].startswith(("INTEROP_NATS_", "INTEROP_REDIS_", "OTEL_EXPORTER_OTLP_CERT"))
                   for e in r.container("routing")["env"])
    assert set(_volumes(r.deployment("routing")["spec"]["template"]["spec"])) == {"tmp"}


@pytest.mark.parametrize("values,message", [
    ({"externalNats": {"auth": {"type": "creds"}}}, "externalNats.auth.type=creds needs externalNats.auth.existingSecret"),
    ({"externalNats": {"auth": {"existingSecret": "x"}}}, "externalNats.auth.type is none"),
    ({"externalNats": {"tls": {"existingSecret": "x"}}}, "externalNats.tls.enabled is false"),
    ({"externalNats": {"tls": {"enabled": True}}}, "externalNats.tls.enabled needs a tls:// URL"),
    ({"externalNats": {"url": "tls://n:4222", "tls": {"enabled": True, "clientCert": True}}}, "externalNats.tls.clientCert needs"),
    ({"externalRedis": {"tls": {"enabled": True}}}, "externalRedis.tls.enabled needs a rediss:// URL"),
    ({"externalRedis": {"url": "rediss://r:6379", "tls": {"existingSecret": "x"}}}, "externalRedis.tls.enabled is false"),
    ({"externalRedis": {"url": "rediss://r:6379", "tls": {"enabled": True, "clientCert": True}}}, "externalRedis.tls.clientCert needs"),
    ({"externalRedis": {"existingSecretUsernameKey": "u"}}, "externalRedis.existingSecretUsernameKey needs externalRedis.existingSecret"),
    ({"otel": {"endpoint": "http://otel:4318", "tls": {"existingSecret": "ca"}}}, "otel.endpoint is http://"),
    ({"otel": {"endpoint": "https://otel:4318", "tls": {"existingSecret": "ca", "existingConfigMap": "ca"}}}, "not both"),
])
def test_contradictory_backend_settings_fail(chart, values, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render(merge(REQUIRED, values), name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)


# --- security ---------------------------------------------------------------


def _pod_specs(r):
    for obj in r.objects:
        if obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["spec"]
        elif obj["kind"] in ("Deployment", "Job"):
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def test_security_context_on_every_container(render):
    r = render(everything_on())
    specs = list(_pod_specs(r))
    assert len(specs) == 7  # five services, the test Pod, the load-test Job
    for name, spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] == 10001, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            # A read-only root needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where


def test_media_transcoding_gets_a_large_tmp_for_ffmpeg(render):
    r = render(merge(REQUIRED, {"mediaTranscoding": {"tmpSizeLimit": "5Gi"}}))
    [tmp] = [v for v in r.deployment("media-transcoding")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
    assert tmp == {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}}


def test_probes_use_the_admin_port(render):
    r = render(REQUIRED)
    for component in SERVICES:
        c = r.container(component)
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_rendering_without_provider_credentials_fails_with_the_required_message(chart):
    with pytest.raises(helm.HelmError) as err:
        chart.render({}, name=RELEASE, namespace=NAMESPACE)
    assert "providers.existingSecret (a Secret holding the provider registry TOML) or providers.registry is required" in str(err.value)


def test_both_provider_sources_are_refused(chart):
    with pytest.raises(helm.HelmError, match="either providers.existingSecret or providers.registry, not both"):
        chart.render({"providers": {"existingSecret": "x", "registry": [
            {"id": "signal", "displayName": "Signal", "encryption": "e2ee", "tokenSha256": [HASH_A]}]}},
            name=RELEASE, namespace=NAMESPACE)


def test_provider_registry_renders_the_toml_the_services_parse(render):
    r = render({"providers": {"registry": [
        {"id": "signal", "displayName": "Signal \"Messenger\"", "privacyPolicyUrl": "https://signal.org/legal/",
         "encryption": "e2ee", "tokenSha256": [HASH_A, HASH_B]},
        {"id": "home", "displayName": "Home", "encryption": "transport-only", "tokenSha256": []},
    ]}})
    [secret] = r.kind("Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-interop-providers"
    registry = tomllib.loads(b64decode(secret["data"]["providers.toml"]).decode())
    assert registry == {"providers": [
        {"id": "signal", "display_name": "Signal \"Messenger\"", "privacy_policy_url": "https://signal.org/legal/",
         "encryption": "e2ee", "token_sha256": [HASH_A, HASH_B]},
        {"id": "home", "display_name": "Home", "privacy_policy_url": "", "encryption": "transport-only", "token_sha256": []},
    ]}


# --- values: schema and documentation --------------------------------------


@pytest.mark.parametrize("bad,message", [
    ({"routing": {"replicaCount": "three"}}, "/routing/replicaCount"),
    ({"ingest": {"autoscaling": {"enabled": "yes"}}}, "/ingest/autoscaling/enabled"),
    ({"jetstream": {"replicas": 0}}, "/jetstream/replicas"),
    ({"jetstream": {"inboxPartitions": 3}}, "/jetstream/inboxPartitions"),
    ({"jetstream": {"inboxPartitions": 128}}, "/jetstream/inboxPartitions"),
    ({"log": {"format": "xml"}}, "/log/format"),
    ({"routing": {"replicas": 3}}, "additional properties 'replicas' not allowed"),
    ({"unknownTopLevel": True}, "additional properties 'unknownTopLevel' not allowed"),
    ({"ingest": {"keda": {"enabled": True}}}, "additional properties 'keda' not allowed"),
    ({"providers": {"registry": [{"id": "Signal!", "displayName": "S", "encryption": "e2ee", "tokenSha256": []}]}}, "/providers/registry/0/id"),
    ({"providers": {"registry": [{"id": "s", "displayName": "S", "encryption": "e2ee", "tokenSha256": ["not-a-hash"]}]}}, "/providers/registry/0/tokenSha256/0"),
    ({"externalRedis": {"url": "redis://:secret@redis:6379"}}, "/externalRedis/url"),
    ({"externalNats": {"url": "nats://user:secret@nats:4222"}}, "/externalNats/url"),
    ({"externalNats": {"auth": {"type": "password"}}}, "/externalNats/auth/type"),
    ({"externalNats": {"tls": {"ca": "x"}}}, "additional properties 'ca' not allowed"),
    ({"externalRedis": {"tls": {"enabled": "yes"}}}, "/externalRedis/tls/enabled"),
    ({"otel": {"tls": {"caFile": "x"}}}, "additional properties 'caFile' not allowed"),
    ({"tests": {"recipientNumberPrefix": "4915"}}, "/tests/recipientNumberPrefix"),
    ({"ingest": {"adminApi": {"port": 0}}}, "/ingest/adminApi/port"),
    ({"ingest": {"adminApi": {"enabled": "yes"}}}, "/ingest/adminApi/enabled"),
    ({"tls": {"clientCa": {"existingSecretKey": ""}}}, "/tls/clientCa/existingSecretKey"),
    ({"routing": {"image": {"digest": "sha256:short"}}}, "/routing/image/digest"),
    ({"routing": {"image": {"name": "x"}}}, "additional properties 'name' not allowed"),
    ({"delivery": {"sidecars": [{"image": "x"}]}}, "/delivery/sidecars/0"),
    ({"delivery": {"extraEnvVars": [{"name": "X", "valeu": "1"}]}}, "additional properties 'valeu' not allowed"),
    ({"ingest": {"lifecycleHooks": {"preStart": {}}}}, "additional properties 'preStart' not allowed"),
    ({"ingest": {"preStopSleepSeconds": -1}}, "/ingest/preStopSleepSeconds"),
    ({"ingress": {"preset": "nginx"}}, "/ingress/preset"),
    ({"ingress": {"ingest": {"host": "x"}}}, "additional properties 'host' not allowed"),
    ({"ingress": {"media": {"hosts": ["Media.Example.com"]}}}, "/ingress/media/hosts/0"),
    ({"httpRoute": {"timeouts": {"websocket": {"request": "1 hour"}}}}, "/httpRoute/timeouts/websocket/request"),
    ({"httpRoute": {"parentRefs": [{"namespace": "x"}]}}, "/httpRoute/parentRefs/0"),
    ({"ingest": {"extraVolumeMount": []}}, "additional properties 'extraVolumeMount' not allowed"),
    ({"mediaTranscoding": {"containerPort": 70000}}, "/mediaTranscoding/containerPort"),
    ({"authThrottle": {"maxFailuresPerAddress": -2}}, "/authThrottle/maxFailuresPerAddress"),
    ({"authThrottle": {"windowSeconds": 0}}, "/authThrottle/windowSeconds"),
    ({"providers": {"registry": [{"id": "s", "displayName": "S", "encryption": "e2ee", "tokenSha256": [],
                                  "capabilities": {"content": ["hologram"]}}]}}, "/providers/registry/0/capabilities/content/0"),
    ({"providers": {"registry": [{"id": "s", "displayName": "S", "encryption": "e2ee", "tokenSha256": [],
                                  "clientCertSha256": ["abc"]}]}}, "/providers/registry/0/clientCertSha256/0"),
])
def test_schema_rejects_bad_values(chart, bad, message):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(merge(REQUIRED, bad))
    assert message in str(err.value)


def test_schema_accepts_the_defaults_and_everything_on(chart):
    chart.validate_schema(REQUIRED)
    chart.validate_schema(everything_on())


def _values_tree() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _paths(tree: Any, prefix: str = ""):
    """Every path in values.yaml, dicts included."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path, value
            yield from _paths(value, path)


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param ([A-Za-z0-9_.]+)", text, re.M))
    paths = dict(_paths(_values_tree()))
    assert documented - paths.keys() == set(), "@param for a value that does not exist"
    undocumented = []
    for path, value in paths.items():
        if isinstance(value, dict) and value:
            continue  # a section; its children are checked
        parts = path.split(".")
        if not any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            undocumented.append(path)
    assert undocumented == []


def test_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []
    for path, _ in _paths(_values_tree()):
        node = schema
        for part in path.split("."):
            props = node.get("properties")
            if props is None:
                break  # a free-form object (subchart values, resources, ...)
            if part not in props:
                if node.get("additionalProperties", True) is False:
                    missing.append(path)
                break  # an open object: subchart values pass through
            node = props[part]
    assert missing == []


def test_no_secret_has_a_default_value(render):
    # Nothing secret in values.yaml: every password/token/secret-like value is empty or names a key.
    for path, value in _paths(_values_tree()):
        leaf = path.rsplit(".", 1)[-1]
        if re.search(r"(?i)password|token|secret|credential", leaf) and not isinstance(value, (dict, bool)):
            assert value in ("", [], None) or leaf.endswith("Key"), f"{path} has a default: {value!r}"
    # The defaults (with the one required value) render no Secret at all.
    assert render(REQUIRED).kind("Secret") == []
    # A chart-made registry holds only the hashes the user gave.
    r = render({"providers": {"registry": [{"id": "signal", "displayName": "Signal", "encryption": "e2ee", "tokenSha256": [HASH_A]}]}})
    [secret] = r.kind("Secret")
    assert HASH_A in b64decode(secret["data"]["providers.toml"]).decode()


# --- names and labels -------------------------------------------------------


def test_labels_include_the_component(render):
    r = render(everything_on())
    per_component = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "ScaledObject", "NetworkPolicy", "Pod", "Job"}
    seen = set()
    for obj in r.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/name"] == "interop"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] in per_component:
            component = labels["app.kubernetes.io/component"]
            seen.add(component)
            assert obj["metadata"]["name"] == f"{RELEASE}-interop-{component}" or obj["kind"] == "Job"
    assert seen == set(SERVICES) | {"tests", "loadtest"}
    for component in SERVICES:
        d = r.deployment(component)
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert r.one("Service", component)["spec"]["selector"] == selector
        assert r.one("PodDisruptionBudget", component)["spec"]["selector"]["matchLabels"] == selector


def test_names_go_through_fullname(render):
    r = render(merge(REQUIRED, {"fullnameOverride": "gw"}))
    for obj in r.objects:
        assert obj["metadata"]["name"].startswith("gw"), obj["metadata"]["name"]
    r = render(REQUIRED, name="interop-prod")
    assert r.deployment("routing")["metadata"]["name"] == "interop-prod-routing"


# --- network policy ---------------------------------------------------------


def test_network_policy_opens_only_the_needed_ports(render):
    r = render(merge(everything_on(), {"externalNats": {"url": "nats://nats.messaging:14222"}}))
    for component in SERVICES:
        np = r.one("NetworkPolicy", component)
        assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        ingress_ports = [p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]]
        expected = {"ingest": ["ws", "provider-admin", "admin"], "delivery": ["ws", "admin"],
                    "media-transcoding": ["media", "admin"]}.get(component, ["admin"])
        assert ingress_ports == expected
        egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])}
        assert egress_ports == {53, 14222, 6379, 4318, 443}
    ws_rule = r.one("NetworkPolicy", "ingest")["spec"]["ingress"][0]
    assert {"ipBlock": {"cidr": "10.0.0.0/8"}} in ws_rule["from"]
    # The release's own test and load-test pods may always connect.
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "interop", "app.kubernetes.io/instance": RELEASE}}} in ws_rule["from"]
    # The provider admin API only from where adminApiFrom says.
    admin_rule = r.one("NetworkPolicy", "ingest")["spec"]["ingress"][1]
    assert admin_rule["ports"] == [{"port": "provider-admin", "protocol": "TCP"}]
    assert admin_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform"}}}]


# --- monitoring -------------------------------------------------------------


def test_service_monitor_scrapes_every_admin_port(render):
    r = render(merge(REQUIRED, {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s"}}, "routing": {"enabled": False}}))
    sm = r.one("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    [expr] = sm["spec"]["selector"]["matchExpressions"]
    assert sorted(expr["values"]) == sorted(set(SERVICES) - {"routing"})
    for component in set(SERVICES) - {"routing"}:
        svc = r.one("Service", component)
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


# The metrics the services register (see services/*/src/metrics.rs and
# shared/bus/src/metrics.rs); names as exposed, with the `_total` of counters.
_STAGES = ["routing", "media_transcoding"]
EMITTED_METRICS = {
    "interop_ingest_accepted_total", "interop_ingest_rejected_total", "interop_ingest_consent_updates_total",
    "interop_ingest_store_seconds", "interop_ingest_connections",
    "interop_spam_scoring_verdicts_total", "interop_spam_scoring_signals_total",
    "interop_spam_scoring_requests_total", "interop_spam_scoring_messages_total",
    "interop_spam_scoring_request_seconds", "interop_media_transcoding_transcodes_total",
    "interop_delivery_sessions", "interop_delivery_delivered_total", "interop_delivery_acked_total",
    "interop_delivery_receipts_total", "interop_delivery_end_to_end_seconds",
    "interop_delivery_recheck_unavailable_total",
    "interop_ingest_auth_throttle_unavailable_total", "interop_delivery_auth_throttle_unavailable_total",
    "interop_media_transcoding_auth_throttle_unavailable_total",
} | {
    f"interop_{s}_{m}" for s in _STAGES for m in [
        "messages_in_total", "messages_out_total", "retries_total", "redeliveries_total",
        "dead_lettered_total", "handle_seconds", "consumer_pending_messages", "consumer_ack_pending_messages",
    ]
}


def test_dashboard_and_alerts_query_interop_metrics(render):
    r = render(merge(REQUIRED, {"metrics": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}))
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["interop-gateway.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    rule = r.one("PrometheusRule")
    alert_exprs = [x["expr"] for x in rule["spec"]["groups"][0]["rules"]]
    alerts = {x["alert"] for x in rule["spec"]["groups"][0]["rules"]}
    assert {"InteropDeadLetters", "InteropConsumerLagGrowing", "InteropIngestRejectRatioHigh",
            "InteropNoReadyReplicas", "InteropTargetDown", "InteropConsentRecheckUnavailable",
            "InteropAuthThrottleUnavailable"} <= alerts
    # Every metric a query names is one the services emit (docs/deploy.md).
    for expr in exprs + alert_exprs:
        literal = re.findall(r"\b(interop_[a-z_]+)\b(?![^{]*\")", expr)
        patterns = re.findall(r'__name__=~\\?"([^"\\]+)', expr)
        assert literal or patterns or "up{" in expr, expr
        for name in literal:
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in EMITTED_METRICS, name
        for pattern in patterns:
            series = EMITTED_METRICS | {m + "_bucket" for m in EMITTED_METRICS if m.endswith("_seconds")}
            assert any(re.fullmatch(pattern, m) for m in series), pattern


# --- helm test and load test ------------------------------------------------


def test_helm_test_needs_credentials(render):
    r = render(REQUIRED)
    assert r.kind("Pod") == []
    assert "helm test` is not set up" in r.notes


def test_helm_test_pod_sends_and_receives_one_message(render):
    r = render(merge(REQUIRED, {"tests": {"existingSecret": "tokens", "senderProvider": "signal"}}))
    pod = r.one("Pod", "tests")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["INTEROP_INGEST_URL"]["value"] == f"ws://{RELEASE}-interop-ingest.{NAMESPACE}.svc:8080/v1/ws"
    assert env["INTEROP_DELIVERY_URL"]["value"] == f"ws://{RELEASE}-interop-delivery.{NAMESPACE}.svc:8081/v1/ws"
    assert env["SENDER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tokens", "key": "sender-token"}
    assert env["RECIPIENT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tokens", "key": "recipient-token"}
    assert env["SENDER_PROVIDER"]["value"] == "signal"
    script = c["command"][2]
    # opt in, listen in the background, send, then require the listener to succeed.
    order = [script.index(s) for s in ("interop opt-in", "interop listen", "&\n", "interop send", 'wait "$listener"')]
    assert order == sorted(order)
    assert "--allow \"$SENDER_PROVIDER\"" in script
    # Tokens stay out of argv.
    assert "--token" not in script
    assert "helm test rel -n ns" in r.notes


def test_generated_test_credentials_match_the_registry(render):
    r = render({
        "providers": {"registry": [
            {"id": "home", "displayName": "Home", "encryption": "e2ee", "tokenSha256": [HASH_A]},
            {"id": "signal", "displayName": "Signal", "encryption": "e2ee", "tokenSha256": [HASH_B]},
        ]},
        "tests": {"generateCredentials": True},
    })
    secrets = {s["metadata"]["name"]: s for s in r.kind("Secret")}
    creds = secrets[f"{RELEASE}-interop-test-credentials"]["data"]
    sender = b64decode(creds["sender-token"]).decode()
    recipient = b64decode(creds["recipient-token"]).decode()
    assert len(sender) == 48 and len(recipient) == 48 and sender != recipient
    registry = tomllib.loads(b64decode(secrets[f"{RELEASE}-interop-providers"]["data"]["providers.toml"]).decode())
    by_id = {p["id"]: p for p in registry["providers"]}
    assert by_id["home"]["token_sha256"] == [HASH_A, hashlib.sha256(recipient.encode()).hexdigest()]
    assert by_id["signal"]["token_sha256"] == [HASH_B]
    assert by_id["helm-test"]["token_sha256"] == [hashlib.sha256(sender.encode()).hexdigest()]
    pod = r.one("Pod", "tests")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["SENDER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-interop-test-credentials"


def test_generated_test_credentials_need_a_home_provider_and_the_chart_registry(chart):
    with pytest.raises(helm.HelmError, match='needs a provider with id \\\\?"home\\\\?"|needs a provider with id "home"'):
        chart.render({"providers": {"registry": [{"id": "signal", "displayName": "S", "encryption": "e2ee", "tokenSha256": []}]},
                      "tests": {"generateCredentials": True}}, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmError, match="needs the chart-managed registry"):
        chart.render(merge(REQUIRED, {"tests": {"generateCredentials": True}}), name=RELEASE, namespace=NAMESPACE)


def test_loadtest_job(chart, render):
    assert render(REQUIRED).kind("Job") == []
    with pytest.raises(helm.HelmError, match="loadtest.scenario .* is required"):
        chart.render(merge(REQUIRED, {"loadtest": {"enabled": True}}), name=RELEASE, namespace=NAMESPACE)
    # A real scenario: the file in the repository must go through unchanged.
    scenario = (CHART.parents[2] / "loadtest" / "scenarios" / "smoke.toml").read_text()
    r = render(merge(REQUIRED, {"loadtest": {"enabled": True, "scenario": scenario, "extraArgs": ["--strict"],
                                             "activeDeadlineSeconds": 7200000}}), revision=4)
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-interop-loadtest"]
    assert cm["data"]["scenario.toml"] == scenario
    job = r.one("Job", "loadtest")
    assert job["metadata"]["name"] == f"{RELEASE}-interop-loadtest-4"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 7200000
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    spec = job["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert "loadtest run --scenario /etc/interop/loadtest/scenario.toml --json /tmp/out.json" in c["command"][2]
    assert c["command"][3:] == ["loadtest", "--strict"]
    assert {"name": "scenario", "mountPath": "/etc/interop/loadtest", "readOnly": True} in c["volumeMounts"]
    assert {"name": "scenario", "configMap": {"name": f"{RELEASE}-interop-loadtest"}} in spec["volumes"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["INTEROP_INGEST_URL"] == f"ws://{RELEASE}-interop-ingest.{NAMESPACE}.svc:8080/v1/ws"


def test_notes_list_the_services(render):
    notes = render(merge(REQUIRED, {"routing": {"enabled": False}})).notes
    assert "routing            disabled" in notes
    assert f"ws://{RELEASE}-interop-ingest.{NAMESPACE}.svc:8080/v1/ws" in notes


def test_provider_endpoints_allow_plaintext_only_when_tls_ends_in_front(render):
    cm = [c for c in render(REQUIRED).kind("ConfigMap") if c["metadata"]["name"].endswith("-config")][0]
    assert cm["data"]["INTEROP_ALLOW_PLAINTEXT"] == "true"
    cm = [c for c in render(merge(REQUIRED, {"tls": {"terminatedInFront": False}})).kind("ConfigMap")
          if c["metadata"]["name"].endswith("-config")][0]
    assert cm["data"]["INTEROP_ALLOW_PLAINTEXT"] == "false"


def test_auth_throttle_per_address_is_off_behind_a_tls_proxy_unless_set(render):
    def config(values):
        return [c for c in render(merge(REQUIRED, values)).kind("ConfigMap")
                if c["metadata"]["name"].endswith("-config")][0]["data"]
    # TLS ends in front (the default): every client has the proxy's address.
    data = config({})
    assert data["INTEROP_AUTH_MAX_FAILURES_PER_ADDRESS"] == "0"
    assert data["INTEROP_AUTH_MAX_FAILURES_PER_PROVIDER"] == "100"
    assert data["INTEROP_AUTH_FAILURE_WINDOW_SECS"] == "60"
    # TLS in the pods: clients' own addresses, so the limit is on.
    assert config({"tls": {"existingSecret": "gw-tls"}})["INTEROP_AUTH_MAX_FAILURES_PER_ADDRESS"] == "20"
    # Set explicitly, it wins either way.
    data = config({"authThrottle": {"maxFailuresPerAddress": 5, "maxFailuresPerProvider": 0, "windowSeconds": 120}})
    assert (data["INTEROP_AUTH_MAX_FAILURES_PER_ADDRESS"], data["INTEROP_AUTH_MAX_FAILURES_PER_PROVIDER"],
            data["INTEROP_AUTH_FAILURE_WINDOW_SECS"]) == ("5", "0", "120")


def test_spam_policy_is_mounted_from_a_configmap_and_rolls_the_pods(render):
    plain = render(REQUIRED)
    assert "INTEROP_SPAM_SCORING_POLICY" not in plain.env("spam-scoring")
    assert not [c for c in plain.kind("ConfigMap") if c["metadata"]["name"].endswith("-spam-policy")]
    policy = "[verdict]\nrequest = 2.5\nquarantine = 5.0\nreject = 10.0\n"
    r = render(merge(REQUIRED, {"spamScoring": {"policy": policy}}))
    assert r.env("spam-scoring")["INTEROP_SPAM_SCORING_POLICY"]["value"] == "/etc/interop/spam-policy/policy.toml"
    assert {"name": "spam-policy", "mountPath": "/etc/interop/spam-policy", "readOnly": True} in r.container(
        "spam-scoring")["volumeMounts"]
    spec = r.deployment("spam-scoring")["spec"]["template"]["spec"]
    [vol] = [v for v in spec["volumes"] if v["name"] == "spam-policy"]
    [cm] = [c for c in r.kind("ConfigMap") if c["metadata"]["name"].endswith("-spam-policy")]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"]["policy.toml"] == policy
    # Only spam-scoring reads it; a changed policy changes its pod template.
    assert "INTEROP_SPAM_SCORING_POLICY" not in r.env("routing")
    annotations = r.deployment("spam-scoring")["spec"]["template"]["metadata"]["annotations"]
    other = render(merge(REQUIRED, {"spamScoring": {"policy": policy.replace("2.5", "3.5")}}))
    assert annotations["checksum/spam-policy"] != other.deployment("spam-scoring")["spec"]["template"]["metadata"][
        "annotations"]["checksum/spam-policy"]
