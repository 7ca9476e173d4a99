"""The deployment files are valid, with no cluster, no Docker engine and no running Prometheus.

- Prometheus: ``promtool check config``, ``promtool check rules``, ``promtool test rules``
  (deploy/prometheus/rules_test.yml), every alert's runbook section, every metric declared.
- Grafana: the dashboard's JSON, its queries (declared metrics, PromQL that promtool parses)
  and the provisioning files.
- docker-compose.yml: the Compose specification's JSON schema (check-jsonschema's vendored
  copy) and ``docker-compose config`` (Debian's docker-compose, no engine needed).
- Kubernetes: every resource of the kustomize base against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict). (kubectl, for a kustomize render, has no Debian package here.)
- deploy/Dockerfile: its shape (it cannot be built here: there is no Docker engine).

promtool and docker-compose come from Debian packages that .ci/run installs: without them these
tests skip on a developer machine and fail in CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared import metrics
from shared.cli import main as cli
from shared.messaging import QUEUES
from tests.conftest import REPO, require_tool

DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "k8s"
COMPOSE = REPO / "docker-compose.yml"
# The oldest Kubernetes the manifests are meant for, and the newest schemas installed.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

METRIC = re.compile(r"\b(eventdesk_[a-z_]+)")


def run(*command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO,
                            env=env)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def declared(name: str) -> bool:
    """Is ``name`` (a series name: with _total, _bucket, ... suffixes) declared in metrics.py?"""
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created", ""):
        if name.endswith(suffix) and name.removesuffix(suffix) in metrics.DECLARED:
            return True
    return False


def undeclared(expr: str) -> list[str]:
    return [name for name in METRIC.findall(expr) if not declared(name)]


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_config_is_valid() -> None:
    promtool = require_tool("promtool", "prometheus")
    assert "SUCCESS" in run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    run(promtool, "check", "rules", str(PROMETHEUS / "rules.yml"))
    assert "SUCCESS" in run(promtool, "test", "rules", str(PROMETHEUS / "rules_test.yml"))


def test_every_alert_has_a_runbook_and_uses_declared_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    headings = {
        line[3:].strip().lower()
        for line in (PROMETHEUS / "RUNBOOK.md").read_text().splitlines() if line.startswith("## ")
    }
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 10
    for rule in alerts:
        annotations = rule["annotations"]
        assert annotations["runbook_url"].endswith("#" + rule["alert"].lower()), rule["alert"]
        assert rule["alert"].lower() in headings, f"RUNBOOK.md has no section {rule['alert']}"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert not undeclared(rule["expr"]), rule["alert"]
    named = {rule["alert"] for rule in alerts}
    # The alerts the issue asked for, by what they watch.
    assert {"EventdeskIntakeInternalErrors", "EventdeskQueueBacklogGrowing",
            "EventdeskEndToEndLatencyHigh", "EventdeskNotificationsDying",
            "EventdeskWorkersDown", "EventdeskDependencyDown"} <= named


def test_scrape_jobs_match_the_alerts() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"eventdesk-api", "eventdesk-worker", "eventdesk-smtp"} <= jobs
    rules = (PROMETHEUS / "rules.yml").read_text()
    for job in re.findall(r'job="(eventdesk-[a-z]+)"', rules):
        assert job in jobs


# ---------------------------------------------------------------------------------------------
# Grafana


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((GRAFANA / "dashboards" / "eventdesk.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        queries += [(panel["title"], target["expr"]) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        queries.append((variable["name"], variable["definition"]))
    return queries


def test_dashboard_is_valid_and_queries_declared_metrics() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "eventdesk.json").read_text())
    assert dashboard["uid"] == "eventdesk"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    for title, expr in dashboard_queries():
        names = METRIC.findall(expr)
        # Every query reads eventdesk's metrics, or Prometheus's own `up` of eventdesk's jobs.
        assert names or 'up{job=~"eventdesk-.*"}' in expr, f"{title}: {expr}"
        assert not undeclared(expr), f"{title}: {undeclared(expr)} not in shared/metrics.py"
    text = json.dumps(dashboard)
    for what in ("eventdesk_events_received_total", "eventdesk_event_latency_seconds_bucket",
                 "eventdesk_queue_depth", 'outcome=~\\"updated|unchanged\\"',
                 "eventdesk_notifications_total", "eventdesk_task_duration_seconds"):
        assert what in text, what


def test_dashboard_queries_are_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule, Grafana's variables filled in)."""
    promtool = require_tool("promtool", "prometheus")
    rules = []
    for number, (_title, query) in enumerate(dashboard_queries()):
        expr = query.replace("$__rate_interval", "5m").replace("$channel", ".*")
        if expr.startswith("label_values("):  # Grafana's own function, not PromQL
            expr = expr.removeprefix("label_values(").split(",")[0]
        rules.append({"record": f"eventdesk:dashboard_query_{number}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(promtool, "check", "rules", str(path))


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    (datasource,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    dashboard = json.loads((GRAFANA / "dashboards" / "eventdesk.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    assert uids == {datasource["uid"]}
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "eventdesk.yml").read_text())["providers"]
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert datasource["url"] == "http://prometheus:9090"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_file_matches_the_compose_specification() -> None:
    run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
        str(COMPOSE))


def test_compose_config_resolves() -> None:
    """``docker-compose config``: interpolation, anchors, references, with no engine."""
    compose = require_tool("docker-compose", "docker-compose")
    env = {**os.environ, "EVENTDESK_SECRET_KEY": "not-a-secret"}
    run(compose, "--project-directory", str(REPO), "-f", str(COMPOSE), "config", "-q", env=env)
    # The secret key is required: the stack does not start with a made-up one.
    env.pop("EVENTDESK_SECRET_KEY")
    result = subprocess.run([compose, "--project-directory", str(REPO), "-f", str(COMPOSE),
                             "config", "-q"], capture_output=True, text=True, env=env, check=False)
    assert result.returncode != 0
    assert "EVENTDESK_SECRET_KEY" in result.stderr


def test_compose_stack_shape() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"migrate", "api", "worker", "beat", "smtp", "redis", "postgres", "prometheus",
            "grafana"} <= set(services)
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
        if service.get("image") == "eventdesk:latest":
            command = service["command"][0]
            assert command in cli.commands, (name, command)
    for role in ("api", "worker", "beat"):
        assert services[role]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully")
        assert "healthcheck" in services[role] or role == "beat"
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis
    assert "--appendfsync everysec" in redis
    assert "--maxmemory-policy noeviction" in redis
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (REPO / source).exists(), mount


# ---------------------------------------------------------------------------------------------
# Kubernetes


def base_resources() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [(name, doc) for name in kustomization["resources"]
            for doc in load_all(K8S / "base" / name)]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_resources_match_the_schemas(version: str) -> None:
    resources = base_resources()
    kinds = {doc["kind"] for _, doc in resources}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "Job"} <= kinds
    for name, doc in resources:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in base_resources()
            if doc["kind"] == "Deployment"}


def test_kubernetes_roles_probes_and_shutdown() -> None:
    found = deployments()
    assert set(found) == {"eventdesk-api", "eventdesk-worker", "eventdesk-beat", "eventdesk-smtp"}
    for name, deployment in found.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["args"][0]
        assert command in cli.commands, name
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"eventdesk-config", "eventdesk-secrets"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] >= 30
    api = found["eventdesk-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["lifecycle"]["preStop"]
    worker = found["eventdesk-worker"]["spec"]["template"]
    assert worker["spec"]["terminationGracePeriodSeconds"] >= 60
    assert worker["metadata"]["annotations"]["prometheus.io/port"] == "9808"
    assert found["eventdesk-beat"]["spec"]["replicas"] == 1
    assert found["eventdesk-beat"]["spec"]["strategy"]["type"] == "Recreate"
    (hpa,) = [doc for _, doc in base_resources() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "eventdesk-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    config = next(doc for _, doc in base_resources() if doc["kind"] == "ConfigMap")
    assert all(key.startswith(("EVENTDESK_", "PROMETHEUS_")) for key in config["data"])


def test_keda_overlay_scales_the_workers_on_queue_length() -> None:
    docs = load_all(K8S / "overlays" / "keda" / "scaledobject.yaml")
    (scaled,) = docs
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "eventdesk-worker"
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] in QUEUES
        assert int(trigger["metadata"]["listLength"]) > 0


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_shape() -> None:
    """One image for every role, as a non-root user, ``eventdesk`` as the entry point.

    Not built here: there is no Docker engine on the machines that run the tests.
    """
    lines: list[str] = []  # logical lines: comments dropped, continuations joined
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(pending.strip())
            pending = ""
    assert not pending
    instructions = [line.split()[0] for line in lines]
    assert instructions[0] == "FROM"
    assert set(instructions) <= {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE",
                                 "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    assert "FROM python:3.11-slim" in lines
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["eventdesk"]' in lines
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
