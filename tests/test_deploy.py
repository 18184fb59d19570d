"""deploy/: the Kubernetes manifests validate offline against Kubernetes' own schemas
(kubernetes-validate ships them), and agree with each other, the Dockerfile and the server: the
probes' endpoints answer, the ports line up, /dev/shm is memory-backed, and the autoscaler's metric
is one that the Prometheus adapter rule makes from metrics Triton exports."""

from __future__ import annotations

import copy
import re
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OLDEST, NEWEST = all_versions()[0], all_versions()[-1]  # Kubernetes releases whose schemas it ships


def load(name: str) -> dict:
    (document,) = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return document


def manifests() -> dict[str, dict]:
    """deploy/*.yaml that are Kubernetes objects (not kustomize's or Helm's files), by kind."""
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        document = load(path.name)
        if "kind" in document and not document["apiVersion"].startswith("kustomize."):
            assert document["kind"] not in found, f"two {document['kind']} manifests"
            found[document["kind"]] = document
    return found


KINDS = manifests()
BUILT_IN = ["Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"]


def container() -> dict:
    (only,) = KINDS["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def container_port(port: int | str) -> int:
    """A container port by number or by name, as probes and Services name it."""
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    if isinstance(port, str):
        assert port in ports, f"no container port named {port!r}"
        return ports[port]
    assert port in ports.values()
    return port


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("kind", BUILT_IN)
def test_manifests_validate_against_the_kubernetes_schemas(kind: str, version: str) -> None:
    kubernetes_validate.validate(KINDS[kind], version, strict=True)  # strict: no unknown fields


def test_the_schemas_catch_a_misspelt_field() -> None:
    broken = copy.deepcopy(KINDS["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NEWEST, strict=True)


def test_every_manifest_is_known_and_the_operator_one_is_checked_by_hand() -> None:
    assert sorted(KINDS) == sorted([*BUILT_IN, "ServiceMonitor"])
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # a CRD: no schema ships for it
        kubernetes_validate.validate(KINDS["ServiceMonitor"], NEWEST, strict=True)
    monitor, service = KINDS["ServiceMonitor"], KINDS["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "metrics"


def test_kustomization_lists_the_manifests_and_names_the_image() -> None:
    kustomization = load("kustomization.yaml")
    listed = {load(name)["kind"] for name in kustomization["resources"]}
    assert listed == set(BUILT_IN)  # the ServiceMonitor needs its CRD: applied separately
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_the_deployment_runs_the_container_on_one_gpu_with_its_volumes() -> None:
    deployment, main = KINDS["Deployment"], container()
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = sorted(map(int, re.search(r"^EXPOSE (.*)$", dockerfile, re.M).group(1).split()))
    assert sorted(p["containerPort"] for p in main["ports"]) == [8000, 8001, 8002] == exposed
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"  # the Python backend's tensors
    repository = re.search(r"--model-repository=(\S+)", dockerfile).group(1)
    claim = volumes[mounts[repository]]["persistentVolumeClaim"]["claimName"]
    assert claim == KINDS["PersistentVolumeClaim"]["metadata"]["name"]
    (key,) = [e for e in main["env"] if e["name"] == "GROUPLAT_ADMIN_KEY"]  # read by the Dockerfile's CMD
    assert key["valueFrom"]["secretKeyRef"]["name"] and "GROUPLAT_ADMIN_KEY" in dockerfile
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_port("metrics") == 8002


def test_probes_ask_triton_and_the_server_answers_them(oracle_server) -> None:
    main = container()
    expected = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
    expected["startupProbe"] = "/v2/health/ready"
    for probe, path in expected.items():
        get = main[probe]["httpGet"]
        assert get["path"] == path and container_port(get["port"]) == 8000, probe
        with urllib.request.urlopen(f"http://{oracle_server.http_url}{path}", timeout=10) as answer:
            assert answer.status == 200


def test_the_service_reaches_the_container_ports() -> None:
    service, pod = KINDS["Service"], KINDS["Deployment"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: (p["port"], container_port(p["targetPort"])) for p in service["spec"]["ports"]}
    assert ports == {"http": (8000, 8000), "grpc": (8001, 8001), "metrics": (8002, 8002)}


def test_the_autoscaler_scales_the_deployment_on_an_adapter_metric_triton_exports(oracle_server) -> None:
    hpa, deployment = KINDS["HorizontalPodAutoscaler"], KINDS["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"],
    )  # fmt: skip
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rules = load("prometheus-adapter-values.yaml")["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per-pod series
    used = set(re.findall(r"\bnv_[a-z_]+", rule["seriesQuery"] + rule["metricsQuery"]))
    assert used == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    with urllib.request.urlopen(f"http://{oracle_server.metrics_url}/metrics", timeout=10) as answer:
        exported = set(re.findall(r"^(nv_[a-z_]+)\{", answer.read().decode(), re.M))
    assert used <= exported
