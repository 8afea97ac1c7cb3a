"""deploy/: the compose file against the Compose Specification schema, the
Kubernetes manifests against the Kubernetes OpenAPI schemas (offline, with
kubernetes-validate), and both against tally's own settings: every TALLY_* variable
they give a tally process is a setting, every port they use is the setting's."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tally.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes minor still supported upstream


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                out.append((f.name, d))
    return out


def setting_of(var: str) -> str:
    assert var.startswith("TALLY_"), var
    name = var.removeprefix("TALLY_").lower()
    assert name in Settings.model_fields, f"{var} is not a tally setting (tally.config.Settings)"
    return name


def tally_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the tally image (the others are Kafka, ClickHouse, ...)."""
    return {
        n: s
        for n, s in doc["services"].items()
        if "tally" in str(s.get("image", "")) or "build" in s
    }


# ------------------------------------------------------------------ compose


def test_compose_file_is_valid_compose_spec() -> None:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(ref.read_text(encoding="utf-8"))
    jsonschema.validate(compose(), schema)
    # ...and the schema does reject what is not Compose
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"x": {"image": "a", "bogus": 1}}}, schema)


def test_compose_stack_has_every_part_with_health_checks_and_volumes() -> None:
    doc = compose()
    services = doc["services"]
    assert {"kafka", "clickhouse", "migrate", "tally-sink", "prometheus", "grafana"} <= set(
        services
    )
    workers = [n for n in services if n.startswith("tally-worker")]
    assert len(workers) >= 2
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["simulator"]["profiles"] == ["simulate"]
    for name in ("kafka", "clickhouse", "prometheus", "grafana", *workers):
        assert "healthcheck" in services[name], name
    for name in workers:
        s = services[name]
        assert s["command"] == ["run", "--no-sink"]
        assert s["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert s["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["tally-sink"]["command"] == ["sink"]
    assert services["migrate"]["command"] == ["db", "migrate"]
    named = set(doc["volumes"])
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith("."):
                assert src in named, f"{name}: volume {src} is not a named volume"
    # Grafana: our provisioning, the dashboards, the ClickHouse plugin
    g = services["grafana"]
    assert "grafana-clickhouse-datasource" in g["environment"]["GF_INSTALL_PLUGINS"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in g["volumes"]


def test_compose_mounts_the_monitoring_files_that_exist() -> None:
    """Prometheus and Grafana get deploy/prometheus and deploy/grafana (owned by the
    observability part); every bind mount points at something in the repository."""
    for name, s in compose()["services"].items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"
    p = compose()["services"]["prometheus"]
    assert any(v.startswith("./prometheus/rules:") for v in p["volumes"])
    assert any(v.startswith("./prometheus/prometheus.yml:") for v in p["volumes"])


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a tally process given exactly this environment would read them."""
    with monkeypatch.context() as m:
        for var, value in env.items():
            setting_of(var)
            m.setenv(var, value)
        return Settings(_env_file=None)


def test_compose_env_vars_are_tally_settings_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    services = tally_services(doc)
    assert len(services) >= 4
    for s in services.values():
        env = {k: _default_of(str(v)) for k, v in s["environment"].items()}
        settings = settings_from_env(env, monkeypatch)  # every value is valid
        assert not settings.embedded and settings.bootstrap_servers() == "kafka:9092"
        assert settings.clickhouse_url is not None


def _default_of(value: str) -> str:
    """`${X:-default}` -> default (what the service gets when X is unset)."""
    out = value
    while "${" in out:
        start = out.index("${")
        end = out.index("}", start)
        inner = out[start + 2 : end]
        default = inner.split(":-", 1)[1] if ":-" in inner else ""
        out = out[:start] + default + out[end + 1 :]
    return out


def test_compose_ports_match_settings() -> None:
    doc = compose()
    web = Settings.model_fields["web_port"].default
    metrics = Settings.model_fields["metrics_port"].default
    for name, s in tally_services(doc).items():
        env = s["environment"]
        assert int(env["TALLY_WEB_PORT"]) == web
        assert int(env["TALLY_METRICS_PORT"]) == metrics
        if name.startswith("tally-worker"):
            assert f"127.0.0.1:{web}/" in " ".join(s["healthcheck"]["test"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t
        for job in prom["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    ]
    workers = [n for n in doc["services"] if n.startswith("tally-worker")]
    for w in workers:
        assert f"{w}:{metrics}" in targets, f"Prometheus does not scrape {w}"


# ----------------------------------------------------------------- kubernetes


@pytest.mark.parametrize(
    ("name", "doc"),
    [m for m in manifests() if m[1]["kind"] not in ("PodMonitor", "Kustomization")],
    ids=lambda v: v if isinstance(v, str) else v["kind"],
)
def test_k8s_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_validation_rejects_a_broken_manifest() -> None:
    doc = next(d for _, d in manifests() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# PodMonitor is a Prometheus Operator CRD: kubernetes-validate ships only the
# built-in API schemas, so it is checked against the fields the operator documents
# (monitoring.coreos.com/v1 PodMonitor: selector, podMetricsEndpoints[].port/path/
# interval), and its port must be a named container port of the selected pods.
_PODMONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


def test_k8s_podmonitor_selects_the_metrics_ports() -> None:
    docs = [d for _, d in manifests()]
    pm = next(d for d in docs if d["kind"] == "PodMonitor")
    jsonschema.validate(pm, _PODMONITOR)
    labels = pm["spec"]["selector"]["matchLabels"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"tally-worker", "tally-sink"}
    for d in deployments:
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert labels.items() <= pod_labels.items(), d["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in _containers(d) for p in c["ports"]}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert ports[ep["port"]] == Settings.model_fields["metrics_port"].default


def _containers(d: dict[str, Any]) -> list[dict[str, Any]]:
    spec = d["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = spec["containers"]
    return containers


def test_k8s_settings_are_tally_settings_and_match_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [d for _, d in manifests()]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    secret = next(d for d in docs if d["kind"] == "Secret")
    s = settings_from_env({**config["data"], **secret["stringData"]}, monkeypatch)
    assert not s.embedded  # a real Kafka
    assert s.web_port == Settings.model_fields["web_port"].default
    assert s.metrics_port == Settings.model_fields["metrics_port"].default
    worker = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tally-worker"
    )
    (c,) = _containers(worker)
    assert c["args"] == ["run", "--no-sink"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"web": s.web_port, "metrics": s.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "web"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            for c in _containers(d):
                refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
                assert refs == {"tally-config", "tally-secrets"}
    job = next(d for d in docs if d["kind"] == "Job")
    assert _containers(job)[0]["args"] == ["db", "migrate"]


def test_kustomization_lists_every_manifest() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files
