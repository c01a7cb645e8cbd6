"""k8s/: every overlay renders with kustomize (kubectl v1.34's, scripts/install-kubectl.sh)
and passes kubernetes-validate in strict mode; the ConfigMaps hold exactly what
templates/ render; probes, ports, mounts, policies and names agree with the configs
they serve; the production overlay is shaped like the deployment guide's; and the
control plane's securityContext, applied as the same options to a real container,
lets bubblewrap run an actor (and each unconfined option is shown to be needed).

No cluster runs here (no kube-apiserver or kubelet in the reachable registries): what a
cluster adds (admission, the CNI enforcing NetworkPolicy, the runtime's user namespace
for hostUsers: false) is docs/kubernetes.md's "what is not verified here".
"""

from __future__ import annotations

import filecmp
import itertools
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.conftest import REPO_ROOT

from .support import require_engine, run_script, wait_for

OVERLAYS = ("trial", "production")
# The oldest Kubernetes whose defaults run the pod as written (user namespaces and
# procMount on by default: 1.33), and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
RENDERED = ("microsandbox.yaml", "nginx-loadbalancer.conf", "prometheus.yml", "redis.conf",
            "rules/microsandbox-alerts.yml")
CONTROL_PLANE_IMAGE = "reflow-microsandbox/control-plane:latest"

Doc = dict[str, Any]


def _kubectl() -> str:
    result = subprocess.run([str(REPO_ROOT / "scripts" / "install-kubectl.sh")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"scripts/install-kubectl.sh failed:\n{result.stderr}")
    return str(REPO_ROOT / result.stdout.strip())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Each overlay rendered by kustomize from a copy of k8s/ with generated secrets."""
    kubectl = _kubectl()
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(REPO_ROOT / "k8s", tree,
                    ignore=shutil.ignore_patterns("secrets.env"))
    out: dict[str, list[Doc]] = {}
    for overlay in OVERLAYS:
        subprocess.run([str(tree / "make-secrets.sh"), str(tree / "overlays" / overlay)],
                       check=True, capture_output=True, timeout=60)
        result = subprocess.run([kubectl, "kustomize", str(tree / "overlays" / overlay)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)
             and (d["metadata"]["name"] == name or kind in ("ConfigMap", "Secret"))]
    assert len(found) == 1, f"{kind}/{name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def _container(deployment: Doc) -> Doc:
    container: Doc = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _config(docs: list[Doc], configmap: str, key: str) -> str:
    data: str = _one(docs, "ConfigMap", configmap)["data"][key]
    return data


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_passes_strict_validation(
    rendered: dict[str, list[Doc]], overlay: str, version: str,
) -> None:
    kinds = {d["kind"] for d in rendered[overlay]}
    assert kinds >= {"Namespace", "Deployment", "StatefulSet", "Service", "ConfigMap", "Secret",
                     "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_a_misspelled_field(rendered: dict[str, list[Doc]]) -> None:
    """The validator really is strict: the same Deployment with one typo fails."""
    deployment = _one(rendered["trial"], "Deployment", "microsandbox")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    _container(broken)["securityContext"]["procMonut"] = "Unmasked"
    with pytest.raises(kubernetes_validate.ValidationError, match="procMonut"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_committed_configs_are_what_the_templates_render(
    rendered: dict[str, list[Doc]], tmp_path: Path,
) -> None:
    result = subprocess.run([str(REPO_ROOT / "k8s" / "render.sh"), str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = REPO_ROOT / "k8s" / "base" / "config"
    stale = [n for n in RENDERED if not filecmp.cmp(tmp_path / n, config / n, shallow=False)]
    assert stale == [], f"k8s/base/config/{stale} differ from templates/: run k8s/render.sh"
    # And the ConfigMaps every overlay applies hold exactly the render.
    for docs in rendered.values():
        assert _config(docs, "microsandbox-config", "microsandbox.yaml") == (
            tmp_path / "microsandbox.yaml").read_text()
        assert _config(docs, "balancer-config", "loadbalancer.conf") == (
            tmp_path / "nginx-loadbalancer.conf").read_text()
        assert _config(docs, "prometheus-config", "prometheus.yml") == (
            tmp_path / "prometheus.yml").read_text()
        assert _config(docs, "redis-config", "redis.conf") == (tmp_path / "redis.conf").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_control_plane_deployment_agrees_with_its_config(
    rendered: dict[str, list[Doc]], overlay: str,
) -> None:
    docs = rendered[overlay]
    config = yaml.safe_load(_config(docs, "microsandbox-config", "microsandbox.yaml"))
    server = config["server"]
    deployment = _one(docs, "Deployment", "microsandbox")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": server["http_port"], "websocket": server["ws_port"],
                     "metrics": server["metrics_port"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}

    # The --config file is where the config map is mounted; the scripts folder, the
    # SQLite directory and /tmp are mounts too (the root filesystem is read-only).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert volumes[mounts[str(Path(config_arg).parent)]]["configMap"]["name"].startswith(
        "microsandbox-config")
    assert Path(config_arg).name == "microsandbox.yaml"
    assert volumes[mounts[config["scripts"]["folders"][0]]]["configMap"]["name"] == (
        "microsandbox-actors")
    assert "emptyDir" in volumes[mounts[str(Path(config["state"]["sqlite_path"]).parent)]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts[config["functions"]["dependency_cache"]]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # SIGTERM comes after preStop; the kubelet kills only after the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + server["drain_timeout"]

    # bubblewrap in the pod, Redis through the guide's variable, tokens required.
    assert config["sandbox"]["backend"] == "bubblewrap"
    env = _env(container)
    assert env["MICROSANDBOX_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@redis-service:6379/0"
    assert list(env).index("REDIS_PASSWORD") < list(env).index("MICROSANDBOX_REDIS_URL")
    assert env["MICROSANDBOX_SERVER_ALLOW_UNAUTHENTICATED"] == "false"
    secret = _one(docs, "Secret", "microsandbox-secrets")
    for variable, key in (("REDIS_PASSWORD", "redis-password"),
                          ("MICROSANDBOX_AUTH_TOKENS", "auth-tokens")):
        assert env[variable]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": key}
        assert key in secret["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_balancer_redis_prometheus_and_policies_fit_together(
    rendered: dict[str, list[Doc]], overlay: str,
) -> None:
    docs = rendered[overlay]
    config = yaml.safe_load(_config(docs, "microsandbox-config", "microsandbox.yaml"))
    nginx_conf = _config(docs, "balancer-config", "loadbalancer.conf")
    prometheus = yaml.safe_load(_config(docs, "prometheus-config", "prometheus.yml"))
    redis_conf = _config(docs, "redis-config", "redis.conf")
    control = _one(docs, "Deployment", "microsandbox")
    control_labels = control["spec"]["template"]["metadata"]["labels"]
    balancer = _one(docs, "Deployment", "balancer")
    balancer_labels = balancer["spec"]["template"]["metadata"]["labels"]
    nginx = _container(balancer)

    # The LoadBalancer: the guide's name and ports, both to nginx's listen port.
    listen = int(next(line.split()[1].rstrip(";") for line in nginx_conf.splitlines()
                      if line.strip().startswith("listen ")))
    assert nginx["ports"] == [{"name": "balancer", "containerPort": listen}]
    lb = _one(docs, "Service", "microsandbox-service")
    assert lb["spec"]["type"] == "LoadBalancer"
    assert [(p["name"], p["port"], p["targetPort"]) for p in lb["spec"]["ports"]] == [
        ("http", 5555, "balancer"), ("websocket", 5556, "balancer")]
    assert lb["spec"]["selector"].items() <= balancer_labels.items()

    # nginx-upstream-sync resolves a headless Service of the ready control-plane pods and
    # probes their readiness on the config's HTTP port; the WebSocket affinity is kept.
    sync_env = _env(nginx)
    pods = _one(docs, "Service", sync_env["MSBX_UPSTREAM_DNS"])
    assert pods["spec"]["clusterIP"] == "None"
    assert not pods["spec"].get("publishNotReadyAddresses", False)
    assert pods["spec"]["selector"].items() <= control_labels.items()
    assert int(sync_env["MSBX_READY_PORT"]) == config["server"]["http_port"]
    assert f"# node={sync_env['MSBX_UPSTREAM_NODE']}" in nginx_conf
    assert "hash $arg_actor consistent;" in nginx_conf

    # Prometheus finds every pod, ready or not, on the metrics port.
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "microsandbox"]
    (sd,) = job["dns_sd_configs"]
    assert sd["port"] == config["server"]["metrics_port"]
    metrics = _one(docs, "Service", sd["names"][0])
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    assert metrics["spec"]["selector"].items() <= control_labels.items()

    # Redis: the URL's host and port are the StatefulSet's Service; AOF on its volume.
    redis = _one(docs, "StatefulSet", "redis")
    redis_port = int(next(line.split()[1] for line in redis_conf.splitlines()
                          if line.startswith("port ")))
    service = _one(docs, "Service", redis["spec"]["serviceName"])
    assert service["metadata"]["name"] == "redis-service"
    assert service["spec"]["ports"][0]["port"] == redis_port
    assert "appendonly yes" in redis_conf and "dir /data" in redis_conf
    redis_mounts = {m["mountPath"]: m["name"] for m in _container(redis)["volumeMounts"]}
    assert redis_mounts["/data"] in [t["metadata"]["name"]
                                     for t in redis["spec"]["volumeClaimTemplates"]]

    # NetworkPolicies: default deny; the nodes' ports only from the balancer, metrics only
    # from Prometheus, Redis only from the nodes.
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (to_nodes,) = [p for p in policies.values()
                   if p["podSelector"].get("matchLabels", {}).items() <= control_labels.items()
                   and p["podSelector"].get("matchLabels")]
    rules = {rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]:
             sorted(port["port"] for port in rule["ports"]) for rule in to_nodes["ingress"]}
    server = config["server"]
    assert rules == {"balancer": sorted([server["http_port"], server["ws_port"]]),
                     "prometheus": [server["metrics_port"]]}
    prometheus_pods = _one(docs, "Deployment", "prometheus")["spec"]["template"]["metadata"]
    assert prometheus_pods["labels"]["app.kubernetes.io/name"] == "prometheus"
    (to_redis,) = [p for p in policies.values()
                   if p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
                   == "redis"]
    assert to_redis["ingress"] == [{
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "microsandbox"}}}],
        "ports": [{"protocol": "TCP", "port": redis_port}],
    }, {
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
        "ports": [{"protocol": "TCP", "port": 9121}],
    }]

    # The disruption budget and the autoscaler point at the control plane.
    pdb = _one(docs, "PodDisruptionBudget", "microsandbox")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= control_labels.items()
    hpa = _one(docs, "HorizontalPodAutoscaler", "microsandbox")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "microsandbox"}


def _sidecar(workload: Doc, name: str) -> Doc:
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"]
                    if c["name"] == name]
    return container


def _flags(container: Doc) -> dict[str, str]:
    """``-flag=value`` arguments as a mapping (the exporters' flag style)."""
    return dict(arg.lstrip("-").split("=", 1) for arg in container["args"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_redis_and_nginx_exporters_run_beside_what_they_export_and_are_scraped(
    rendered: dict[str, list[Doc]], overlay: str, tmp_path: Path,
) -> None:
    """As docker-stack.yml runs them: Debian's exporters, the images
    scripts/build-service-images.sh builds, the Redis password from the Secret; each on a
    port Prometheus's rendered config scrapes and the NetworkPolicies let it reach."""
    docs = rendered[overlay]
    stack = yaml.safe_load((REPO_ROOT / "docker-stack.yml").read_text())["services"]
    redis = _one(docs, "StatefulSet", "redis")
    balancer = _one(docs, "Deployment", "balancer")
    redis_exporter = _sidecar(redis, "redis-exporter")
    nginx_exporter = _sidecar(balancer, "nginx-exporter")
    for container, service in ((redis_exporter, "redis-exporter"),
                               (nginx_exporter, "nginx-exporter")):
        # docker-stack.yml's default (${REDIS_EXPORTER_IMAGE:-IMAGE}), or from the registry.
        image = stack[service]["image"].split(":-", 1)[1].rstrip("}")
        if overlay == "production":
            image = image.replace("reflow-microsandbox/compose-",
                                  "registry.example.com/reflow/microsandbox-").replace(
                                      ":latest", ":0.1.0")
        assert container["image"] == image
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    # Redis: over the pod's loopback on the config's port, authenticated by the Secret.
    redis_conf = _config(docs, "redis-config", "redis.conf")
    redis_port = int(next(line.split()[1] for line in redis_conf.splitlines()
                          if line.startswith("port ")))
    flags = _flags(redis_exporter)
    assert flags["redis.addr"] == f"redis://127.0.0.1:{redis_port}"
    secret = _one(docs, "Secret", "microsandbox-secrets")
    assert _env(redis_exporter)["REDIS_PASSWORD"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "redis-password"}
    redis_metrics = int(flags["web.listen-address"].rsplit(":", 1)[1])
    assert {"name": "metrics", "containerPort": redis_metrics} in redis_exporter["ports"]

    # nginx: the stub_status server the rendered balancer config serves on loopback.
    nginx_conf = _config(docs, "balancer-config", "loadbalancer.conf")
    status_server = nginx_conf[nginx_conf.index("location = /stub_status") - 80:]
    status_listen = next(line.split()[1].rstrip(";") for line in status_server.splitlines()
                         if line.strip().startswith("listen "))
    flags = _flags(nginx_exporter)
    assert flags["nginx.scrape-uri"] == f"http://{status_listen}/stub_status"
    assert status_listen.startswith("127.0.0.1:")
    nginx_metrics = int(flags["web.listen-address"].rsplit(":", 1)[1])
    assert {"name": "metrics", "containerPort": nginx_metrics} in nginx_exporter["ports"]

    # Prometheus's rendered config names each exporter: Redis's one pod through its
    # headless Service, every balancer pod through balancer-metrics (DNS discovery).
    text = _config(docs, "prometheus-config", "prometheus.yml")
    prometheus = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    (redis_static,) = jobs["redis"]["static_configs"]
    assert redis_static["targets"] == [f"redis-service:{redis_metrics}"]
    assert redis_static["labels"] == {"host": "redis"}
    redis_service = _one(docs, "Service", "redis-service")
    assert redis_service["spec"]["clusterIP"] == "None"
    (nginx_sd,) = jobs["nginx"]["dns_sd_configs"]
    assert nginx_sd["port"] == nginx_metrics
    metrics = _one(docs, "Service", nginx_sd["names"][0])
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    assert metrics["spec"]["selector"].items() <= (
        balancer["spec"]["template"]["metadata"]["labels"].items())
    assert jobs["nginx"]["relabel_configs"] == [{"target_label": "host",
                                                 "replacement": "balancer"}]
    if overlay == "production":  # every image of every pod comes from the registry
        images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                  for c in d["spec"]["template"]["spec"]["containers"]}
        assert all(i.startswith("registry.example.com/") for i in images), images

    # Every alert on the exporters' series has a job to fire from.
    alerts = _config(docs, "prometheus-rules", "microsandbox-alerts.yml")
    assert 'job="redis"' in alerts and 'job="nginx"' in alerts
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    check = subprocess.run(["promtool", "check", "config", "--syntax-only", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    # Only Prometheus reaches the exporters' ports.
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
    for labels, port in ((redis["spec"]["template"]["metadata"]["labels"], redis_metrics),
                         (balancer["spec"]["template"]["metadata"]["labels"], nginx_metrics)):
        allowed = [rule for p in policies if p["podSelector"].get("matchLabels")
                   and p["podSelector"]["matchLabels"].items() <= labels.items()
                   for rule in p.get("ingress", [])
                   if any(x["port"] == port for x in rule["ports"])]
        assert [rule["from"] for rule in allowed] == [
            [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]]


def _docker(*argv: str) -> str:
    result = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker {argv[:2]}: {result.stderr}"
    return result.stdout.strip()


def _scrape(address: str, series: str) -> str | None:
    """The exporter's /metrics once ``series`` is in it, else None (not up yet)."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=3) as response:
            text: str = response.read().decode()
    except OSError:
        return None
    return text if series in text.splitlines() else None


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_the_exporter_sidecars_export_what_they_sit_beside(
    rendered: dict[str, list[Doc]], tmp_path: Path,
) -> None:
    """Each pod's two containers, run as Docker containers sharing one network namespace
    (as a pod's do) with the rendered images, args, env and configs: the Redis exporter
    logs in with the Secret's password over loopback (redis_up 1), the nginx exporter
    reads nginx's loopback-only stub_status (nginx_up 1). A wrong password shows as
    redis_up 0, so the first check is not one that cannot fail."""
    require_engine()
    run_script("scripts/build-service-images.sh")
    docs = rendered["trial"]  # the trial overlay keeps the locally built images
    redis = _one(docs, "StatefulSet", "redis")
    balancer = _one(docs, "Deployment", "balancer")
    (tmp_path / "redis.conf").write_text(_config(docs, "redis-config", "redis.conf"))
    (tmp_path / "loadbalancer.conf").write_text(
        _config(docs, "balancer-config", "loadbalancer.conf"))
    started: list[str] = []
    # A network of its own (the engine's default bridge may be disabled), reached from here.
    network = _docker("network", "create", f"msb-k8s-exporters-{uuid.uuid4().hex[:12]}")

    def run(*argv: str) -> str:
        if argv[0] != "--network":
            argv = ("--network", network, *argv)
        started.append(_docker("run", "-d", "--rm", *argv))
        return started[-1]

    def address(container: str, port: int) -> str:
        ip = _docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                     container)
        return f"{ip}:{port}"

    def exporter(pod: str, container: Doc, password: str | None = None) -> str:
        env = ["-e", f"REDIS_PASSWORD={password}"] if password is not None else []
        run("--network", f"container:{pod}", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", *env, container["image"],
            *container["args"])
        return address(pod, int(_flags(container)["web.listen-address"].rsplit(":", 1)[1]))

    try:
        password = "k8s-exporter-test-password"
        pod = run("--read-only", "--tmpfs", "/data:uid=100,gid=101", "--cap-drop", "ALL",
                  "-e", f"REDIS_PASSWORD={password}",
                  "-v", f"{tmp_path / 'redis.conf'}:/etc/redis/microsandbox.conf:ro",
                  _container(redis)["image"])
        wrong = exporter(pod, _sidecar(redis, "redis-exporter"), "not-the-password")
        wait_for("the exporter with a wrong password", lambda: _scrape(wrong, "redis_up 0"),
                 tries=60)
        _docker("rm", "-f", started.pop())
        right = exporter(pod, _sidecar(redis, "redis-exporter"), password)
        metrics = wait_for("redis_up 1", lambda: _scrape(right, "redis_up 1"), tries=60)
        assert "redis_connected_clients" in metrics

        nginx = _container(balancer)
        pod = run("--add-host", "microsandbox:127.0.0.1",
                  "-v", f"{tmp_path / 'loadbalancer.conf'}:/etc/nginx/conf.d/lb.conf:ro",
                  nginx["image"])
        scraped = exporter(pod, _sidecar(balancer, "nginx-exporter"))
        metrics = wait_for("nginx_up 1", lambda: _scrape(scraped, "nginx_up 1"), tries=60)
        assert "nginx_connections_accepted" in metrics
    finally:
        for container in reversed(started):
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
        subprocess.run(["docker", "network", "rm", network], capture_output=True, timeout=60)


def test_the_production_overlay_is_shaped_like_the_guide(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["production"]
    deployment = _one(docs, "Deployment", "microsandbox")
    assert deployment["spec"]["replicas"] == 10
    assert _container(deployment)["resources"] == {
        "requests": {"memory": "2Gi", "cpu": "1"}, "limits": {"memory": "4Gi", "cpu": "2"}}
    hpa = _one(docs, "HorizontalPodAutoscaler", "microsandbox")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (10, 30)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"reflow"}
    trial = _one(rendered["trial"], "Deployment", "microsandbox")
    assert trial["spec"]["replicas"] == 2


def _docker_options(security: Doc) -> list[str]:
    """The container securityContext as the equivalent ``docker run`` options."""
    options = ["--user", str(security["runAsUser"]), "--cap-drop", "ALL"]
    for capability in security["capabilities"]["add"]:
        options += ["--cap-add", capability]
    if security["allowPrivilegeEscalation"] is False:
        options += ["--security-opt", "no-new-privileges"]
    if security["seccompProfile"]["type"] == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    if security["appArmorProfile"]["type"] == "Unconfined":
        options += ["--security-opt", "apparmor=unconfined"]
    if security["procMount"] == "Unmasked":  # the CRI's unmasked /proc = Docker's systempaths
        options += ["--security-opt", "systempaths=unconfined"]
    if security["readOnlyRootFilesystem"]:
        options += ["--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/microsandbox"]
    return options


def _without(options: list[str], flag: str, value: str) -> list[str]:
    """``options`` less one ``flag value`` pair."""
    index = list(itertools.pairwise(options)).index((flag, value))
    return options[:index] + options[index + 2:]


def _run_actor(options: list[str], actors: Path, script: str, config: Path,
               after: str = "") -> subprocess.CompletedProcess[str]:
    command = ("reflow-microsandbox run --config /etc/microsandbox/microsandbox.yaml "
               f"/srv/microsandbox/actors/{script}; status=$?; {after} exit $status")
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none",
         "-e", "MICROSANDBOX_SANDBOX_CALL_TIMEOUT=2", *options,
         "-v", f"{config}:/etc/microsandbox/microsandbox.yaml:ro",
         "-v", f"{actors}:/srv/microsandbox/actors:ro",
         "--entrypoint", "sh", CONTROL_PLANE_IMAGE, "-c", command],
        capture_output=True, text=True, timeout=180,
    )


# Lists the processes left in the container: a sandbox runs as a uid of its own.
_SANDBOX_PROCESSES = (
    "python3 -c 'import os\nfor p in os.listdir(\"/proc\"):\n if p.isdigit():\n"
    "  try: s = open(\"/proc/%s/status\" % p).read()\n  except OSError: continue\n"
    "  uid = int(s.split(\"Uid:\")[1].split()[0])\n"
    "  print(\"sandbox process left:\", p) if uid >= 60000 else None';"
)


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_the_pod_security_context_lets_bubblewrap_run_and_each_unconfined_option_is_needed(
    rendered: dict[str, list[Doc]], tmp_path: Path,
) -> None:
    """The container securityContext of the rendered Deployment, applied by Docker (the
    same kernel facilities a CRI runtime sets: seccomp, AppArmor, /proc masks,
    capabilities, no_new_privs, read-only root), runs an actor in a bubblewrap sandbox.
    Without each unconfining line, or without a capability, it does not; without KILL
    an overrunning sandbox outlives its call. hostUsers: false has no per-container
    Docker equivalent: tests/unit/test_sandbox_uids.py covers its uid range."""
    require_engine()
    run_script("scripts/build-images.sh")
    run_script("scripts/build-control-plane-image.sh")
    docs = rendered["production"]
    security = _container(_one(docs, "Deployment", "microsandbox"))["securityContext"]
    assert security["privileged"] is False
    config = tmp_path / "microsandbox.yaml"
    config.write_text(_config(docs, "microsandbox-config", "microsandbox.yaml"))
    actors = tmp_path / "actors"
    actors.mkdir()
    shutil.copy(REPO_ROOT / "examples" / "test_actor.py", actors)
    (actors / "looper.py").write_text(
        '@actor(name="looper")\ndef process(context):\n    while True:\n        pass\n')

    options = _docker_options(security)
    ok = _run_actor(options, actors, "test_actor.py", config)
    assert ok.returncode == 0, ok.stderr
    assert '"status": "success"' in ok.stdout and "bubblewrap sandbox" in ok.stderr

    expected_failures = {
        "seccomp=unconfined": "No permissions to create new namespace",
        "systempaths=unconfined": "Can't mount proc on /newroot/proc",
    }
    for option, message in expected_failures.items():
        failed = _run_actor(_without(options, "--security-opt", option), actors,
                            "test_actor.py", config)
        assert failed.returncode != 0 and message in failed.stderr, (option, failed.stderr)
    for capability in ("SETUID", "SETGID"):
        failed = _run_actor(_without(options, "--cap-add", capability), actors,
                            "test_actor.py", config)
        assert failed.returncode != 0 and "Operation not permitted" in failed.stderr, capability

    # A call that overruns ends with a timeout, and its sandbox dies with it (KILL).
    stopped = _run_actor(options, actors, "looper.py", config, after=_SANDBOX_PROCESSES)
    assert "error (timeout)" in stopped.stdout + stopped.stderr
    assert "sandbox process left" not in stopped.stdout
    leaked = _run_actor(_without(options, "--cap-add", "KILL"), actors, "looper.py", config,
                        after=_SANDBOX_PROCESSES)
    assert "sandbox process left" in leaked.stdout
