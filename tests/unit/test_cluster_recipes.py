"""The shipped cluster recipes pass the checks of the tools that consume them.

* every Ray cluster-launcher YAML in ``cluster/``: Ray's own schema check, run as ``ray up`` runs
  it (``prepare_config`` fills the provider defaults offline, then ``validate_config``);
* ``rayjob.yaml``: the fields KubeRay's ``ray.io/v1`` RayJob CRD requires and allows;
* ``slurm.sh``: ``shellcheck`` (when installed; ``.ci/run`` installs it), and the behaviour the
  script promises (waits for nodes, stops only its own steps, private token).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from lesionsweep.cluster import CLUSTER_DIR
from ray.autoscaler._private.util import prepare_config, validate_config

LAUNCHER_YAMLS = sorted(
    p for p in CLUSTER_DIR.glob("*.yaml") if "available_node_types" in p.read_text()
)


def test_there_is_a_launcher_yaml() -> None:
    assert [p.name for p in LAUNCHER_YAMLS] == ["ray-cluster.yaml"]


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_validator(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))  # what `ray up` runs, minus the cloud


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_validator_refuses_a_node_type_without_resources(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    for node_type in raw["available_node_types"].values():
        assert "resources" in node_type and "node_config" in node_type
    broken = copy.deepcopy(raw)
    del next(iter(broken["available_node_types"].values()))["resources"]
    with pytest.raises(Exception, match="'resources' is a required property"):
        validate_config(prepare_config(broken))


def test_launcher_keeps_the_dashboard_local_and_the_token_private() -> None:
    raw = yaml.safe_load((CLUSTER_DIR / "ray-cluster.yaml").read_text())
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])
    assert "chmod 600 ~/.ray/auth_token" in raw["setup_commands"][0]
    assert raw["available_node_types"][raw["head_node_type"]]["resources"] == {"CPU": 0}


# --- KubeRay RayJob ------------------------------------------------------------------------
# Field names of KubeRay's ray.io/v1 CRDs (RayJobSpec, RayClusterSpec, HeadGroupSpec,
# WorkerGroupSpec) that a manifest may use at these levels, from KubeRay's generated API reference
# (v1.5-v1.7, https://ray-project.github.io/kuberay/reference/api/); anything else is refused by
# the API server's structural schema. The full CRD (1.1 MB) is not vendored.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
    "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId",
    "managedBy", "metadata", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
    "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend",
    "ttlSecondsAfterFinished",
}  # fmt: skip
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
    "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP_FIELDS = {
    "groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts",
    "rayStartParams", "replicas", "scaleStrategy", "suspend", "template",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert isinstance(containers, list) and containers
    for c in containers:
        assert isinstance(c["name"], str) and c["name"]
        assert isinstance(c["image"], str) and c["image"]
        for kind in ("limits", "requests"):
            for k, v in c.get("resources", {}).get(kind, {}).items():
                assert isinstance(v, (str, int)), (k, v)  # int-or-string quantities
    return containers


def test_rayjob_has_the_fields_kuberay_requires_and_no_others() -> None:
    doc = yaml.safe_load((CLUSTER_DIR / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert isinstance(spec["shutdownAfterJobFinishes"], bool)
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        assert isinstance(spec[key], int) and spec[key] > 0
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["lesionsweep", "sweep"] and "--address" in entry
    rc = spec["rayClusterSpec"]
    assert set(rc) <= RAYCLUSTER_SPEC_FIELDS, set(rc) - RAYCLUSTER_SPEC_FIELDS
    assert rc["authOptions"] == {"mode": "token"}
    head = rc["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # map of strings
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs only the driver
    _containers(head["template"])
    groups = rc["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert set(g) <= WORKER_GROUP_FIELDS, set(g) - WORKER_GROUP_FIELDS
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        _containers(g["template"])


# --- SLURM ---------------------------------------------------------------------------------
SLURM = CLUSTER_DIR / "slurm.sh"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_slurm_script_passes_shellcheck() -> None:
    r = subprocess.run(["shellcheck", str(SLURM)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_slurm_script_waits_stops_its_own_and_keeps_the_token_private() -> None:
    text = SLURM.read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines() if not line.startswith("#"))
    assert "ray stop" not in code  # it would end every Ray process of the user on the node
    assert not re.search(r"\bsleep\s+([5-9]|\d\d)", code)  # no fixed waits for the cluster
    assert "wait_nodes" in code and "ray status" in code and "WAIT_S" in code
    # the token is written inside a subshell whose umask is 077, so it is 0600 from creation
    umask = code.index("umask 077")
    write = code.index('> "$RAY_AUTH_TOKEN_PATH"')
    assert umask < write and code.rfind("(", 0, umask) > code.rfind(")", 0, umask)
    assert 'kill -TERM "${ray_steps[@]}"' in code and "trap cleanup EXIT" in code
    r = subprocess.run(["bash", "-n", str(SLURM)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
