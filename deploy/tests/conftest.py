"""Rendering helpers for the chart tests.

Charts are rendered offline through Helm's own Go SDK (helm-python-sdk), so
what is checked here is what `helm template` / `helm install` would produce.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "interop"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBE_VERSION = "1.31"
RELEASE = "rel"
NAMESPACE = "ns"

# The five services: component label -> values key.
SERVICES = {
    "ingest": "ingest",
    "spam-scoring": "spamScoring",
    "routing": "routing",
    "media-transcoding": "mediaTranscoding",
    "delivery": "delivery",
}
EDGE = {"ingest", "delivery"}
# Services that read the provider registry file: the edge and the media API.
PROVIDER_READERS = EDGE | {"media-transcoding"}

# The least a user must give: the provider registry.
REQUIRED = {"providers": {"existingSecret": "interop-providers"}}

# Distinctive Secret names and keys: none of them may appear in a ConfigMap.
SENTINEL = {name: f"sentinel-{name.lower()}-x7q" for name in (
    "natsAuthSecret", "natsUserKey", "natsPasswordKey", "natsTlsSecret", "natsCaKey", "natsCertKey", "natsKeyKey",
    "redisSecret", "redisPasswordKey", "redisUserKey", "redisTlsSecret", "redisCaKey", "redisCertKey", "redisKeyKey",
    "otelCaSecret", "otelCaKey", "ingressTlsSecret",
)}

HASH_A = "a" * 64
HASH_B = "b" * 64


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges values dicts, later ones winning."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def everything_on() -> dict[str, Any]:
    """Values turning on every optional object the chart can render."""
    values: dict[str, Any] = {
        "providers": {"existingSecret": "interop-providers"},
        "otel": {"endpoint": "https://otel-collector.observability:4318",
                 "tls": {"existingSecret": SENTINEL["otelCaSecret"], "caKey": SENTINEL["otelCaKey"]}},
        "jetstream": {"replicas": 3},
        "externalNats": {
            "url": "tls://nats.messaging:4222",
            "auth": {"type": "userPassword", "existingSecret": SENTINEL["natsAuthSecret"],
                     "userKey": SENTINEL["natsUserKey"], "passwordKey": SENTINEL["natsPasswordKey"]},
            "tls": {"enabled": True, "existingSecret": SENTINEL["natsTlsSecret"], "caKey": SENTINEL["natsCaKey"],
                    "clientCert": True, "certKey": SENTINEL["natsCertKey"], "keyKey": SENTINEL["natsKeyKey"]},
        },
        "externalRedis": {
            "url": "rediss://redis-master.cache:6379/0",
            "existingSecret": SENTINEL["redisSecret"],
            "existingSecretPasswordKey": SENTINEL["redisPasswordKey"],
            "existingSecretUsernameKey": SENTINEL["redisUserKey"],
            "tls": {"enabled": True, "existingSecret": SENTINEL["redisTlsSecret"], "caKey": SENTINEL["redisCaKey"],
                    "clientCert": True, "certKey": SENTINEL["redisCertKey"], "keyKey": SENTINEL["redisKeyKey"]},
        },
        "networkPolicy": {
            "enabled": True,
            "restrictEgress": True,
            "clientsFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "extraEgress": [{"ports": [{"port": 443, "protocol": "TCP"}]}],
        },
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
        "tests": {"existingSecret": "interop-test-tokens"},
        "loadtest": {
            "enabled": True,
            "scenario": 'duration = "60s"\nrate = 1000\n',
            "existingSecret": "loadtest-tokens",
            "env": {"RUST_BACKTRACE": "1"},
            "extraArgs": ["--progress"],
        },
    }
    for component, key in SERVICES.items():
        block: dict[str, Any] = {
            "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
            "nodeSelector": {"pool": "gateway"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gateway", "effect": "NoSchedule"}],
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": component}},
                }
            ],
            "env": {"INTEROP_EXTRA": "1"},
            "pdb": {"minAvailable": "50%"},
        }
        if key != "ingest":
            block["keda"] = {"enabled": True}
        values[key] = block
    # delivery has no shared durable consumer: scale it on CPU through KEDA.
    values["delivery"]["keda"]["extraTriggers"] = [
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    ]
    # Extension points: a sidecar and an init container (with the chart's security context), extra env and volumes.
    safe = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
    tmp = [{"name": "tmp", "mountPath": "/tmp"}]
    values["global"] = {"imageRegistry": "mirror.example.com"}
    values["delivery"].update({
        "extraEnvVars": [{"name": "INTEROP_FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "extra", "key": "k"}}}],
        "extraEnvVarsCM": "delivery-extra-env", "extraEnvVarsSecret": "delivery-extra-secret-env",
        "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/extra", "readOnly": True}],
        "sidecars": [{"name": "log-shipper", "image": "busybox:1.36", "command": ["sleep", "infinity"],
                      "securityContext": safe, "volumeMounts": tmp}],
        "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["true"],
                            "securityContext": safe, "volumeMounts": tmp}],
        "lifecycleHooks": {"postStart": {"exec": {"command": ["true"]}}},
        "image": {"tag": "0.2.0-rc1"},
    })
    values["mediaTranscoding"]["image"] = {"digest": "sha256:" + "c" * 64}
    # The edge serves TLS itself (below), so only the media API goes through an Ingress / HTTPRoute.
    values["ingress"] = {"enabled": True, "className": "nginx", "preset": "ingress-nginx",
                         "tls": {"secretName": SENTINEL["ingressTlsSecret"]},
                         "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                         "media": {"hosts": ["media.example.com"]}}
    values["httpRoute"] = {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system"}],
                           "media": {"hostnames": ["media.example.com"]}}
    # ingest keeps a plain HPA, and serves the provider admin API.
    values["ingest"]["adminApi"] = {"enabled": True, "existingSecret": "interop-admin-token"}
    values["networkPolicy"]["adminApiFrom"] = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform"}}}
    ]
    # The edge serves TLS itself, with optional mutual TLS.
    values["tls"] = {"existingSecret": "interop-tls", "clientCa": {"existingSecret": "interop-client-ca"}}
    return values


class Rendered:
    """The objects of one render, with lookups by kind and component."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for obj in yaml.safe_load_all(text):
                if obj:
                    obj.setdefault("__source", path)
                    self.objects.append(obj)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.kind(kind)
            if component is None
            or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.one("Deployment", component)

    def container(self, component: str) -> dict[str, Any]:
        """The service's own container (sidecars may follow it)."""
        containers = self.deployment(component)["spec"]["template"]["spec"]["containers"]
        [own] = [c for c in containers if c["name"] == component]
        return own

    def env(self, component: str) -> dict[str, Any]:
        """The container's explicit env, name -> entry."""
        return {e["name"]: e for e in self.container(component).get("env", [])}

    def clean(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in o.items() if k != "__source"} for o in self.objects]


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    def _render(values: dict[str, Any] | None = None, **opts: Any) -> Rendered:
        opts.setdefault("name", RELEASE)
        opts.setdefault("namespace", NAMESPACE)
        return Rendered(chart.render(values or {}, **opts))

    return _render


def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        api_version = schema["properties"]["apiVersion"]["const"]
        kind = schema["properties"]["kind"]["const"]
        validators[(api_version, kind)] = jsonschema.Draft7Validator(schema)
    return validators


CRD_VALIDATORS = _crd_validators()


def validate_object(obj: dict[str, Any]) -> None:
    """Validates one object strictly: Kubernetes 1.31 schemas, or ours for CRDs."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_VALIDATORS:
        errors = sorted(CRD_VALIDATORS[key].iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            raise AssertionError(
                f"{key[1]} {obj['metadata'].get('name')}: "
                + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
            )
        return
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(
            f"{key[1]} {obj['metadata'].get('name')} at {list(e.path)}: {e.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError:
        raise AssertionError(f"no schema for {key}: add one under deploy/tests/schemas") from None
