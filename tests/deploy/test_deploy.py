"""Static checks of deploy/: the systemd unit (systemd-analyze verify), the
Kubernetes manifests (OpenAPI schemas through kubernetes-validate), the
Slurm script (bash -n, shellcheck) and the Containerfile's structure. Each
check skips when its tool is missing; none needs a GPU, a cluster or a
registry."""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "evalserver.service"
SBATCH = DEPLOY / "slurm" / "evalserver-2node.sbatch"
K8S = DEPLOY / "k8s"

yaml = pytest.importorskip("yaml")


# ---------------------------------------------------------------- systemd

def unit_values(text):
    """[(section, key, value)] with continuation lines joined."""
    out, section, pending = [], None, ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def test_systemd_unit_fields():
    vals = unit_values(UNIT.read_text())
    get = lambda k: [v for s, kk, v in vals if kk == k]  # noqa: E731
    assert get("Restart") == ["on-failure"]
    assert get("LoadCredential") == ["api-key:/etc/evalserver/api-key"]
    exec_start = get("ExecStart")[0]
    # The key is read from the credentials directory, never passed inline.
    assert "--api-key-file %d/api-key" in exec_start
    assert "--api-key " not in exec_start
    assert not any("EVALSERVER_API_KEY" in v for v in get("Environment"))
    for k in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "DynamicUser"):
        assert get(k) == ["yes"], k
    assert get("ProtectSystem") == ["strict"]
    assert get("CapabilityBoundingSet") == [""]
    assert get("KillSignal") == ["SIGTERM"]
    assert get("WantedBy") == ["multi-user.target"]


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify insists that ExecStart's binary exists: point it at a stub.
    stub = tmp_path / "evalserver"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "evalserver.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/evalserver", str(stub)))
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 and ("Failed to " in r.stderr and "bus" in r.stderr.lower()):
        pytest.skip(f"systemd-analyze cannot run here: {r.stderr.strip()[:200]}")
    # verify reports unknown keys and bad values as warnings with exit 0:
    # any line naming the unit is a failure.
    complaints = [ln for ln in (r.stdout + r.stderr).splitlines() if "evalserver" in ln]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def test_systemd_verify_catches_mistakes(tmp_path):
    """The check above would notice a typo (guards against a verify that
    silently checks nothing)."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed")
    stub = tmp_path / "evalserver"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "evalserver.service"
    text = UNIT.read_text().replace("/usr/local/bin/evalserver", str(stub))
    unit.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=120)
    assert "sometimes" in r.stdout + r.stderr


# ---------------------------------------------------------------- kubernetes

def load_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_validate(doc, strict=True):
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate not installed (tests/requirements.txt)")
    version = kv.utils.latest_version()
    kv.validate(doc, version, strict)


def test_deployment_and_service_schema():
    docs = load_docs(K8S / "deployment.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Service"]
    for d in docs:
        k8s_validate(d)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    svc = next(d for d in docs if d["kind"] == "Service")
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    # Probes on /health, GPUs requested, data-parallel flag, key from a Secret.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1
    dp = [a for a in c["args"] if a.startswith("--dp=")]
    assert dp and int(dp[0].split("=")[1]) == gpus
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["EVALSERVER_API_KEY"]["valueFrom"]
    # The Service selects the Deployment's pods on the named port.
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    timeout = [a for a in c["args"] if a.startswith("--shutdown-timeout=")]
    assert timeout and grace > float(timeout[0].split("=")[1])


def test_k8s_validator_rejects_bad_manifest():
    kv = pytest.importorskip("kubernetes_validate")
    dep = next(d for d in load_docs(K8S / "deployment.yaml") if d["kind"] == "Deployment")
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        k8s_validate(dep)


# The LeaderWorkerSet v1 fields this project uses (kubernetes-validate has
# no schema for the CRD); pod templates are checked with the core schema.
LWS_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "leaderworkerset.x-k8s.io/v1"},
        "kind": {"const": "LeaderWorkerSet"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["leaderWorkerTemplate"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 0},
                "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
                "rolloutStrategy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "RollingUpdate"},
                        "rollingUpdateConfiguration": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "maxUnavailable": {"type": ["integer", "string"]},
                                "maxSurge": {"type": ["integer", "string"]},
                            },
                        },
                    },
                },
                "networkConfig": {"type": "object"},
                "leaderWorkerTemplate": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["workerTemplate"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "restartPolicy": {"enum": ["RecreateGroupOnPodRestart", "None",
                                                   "Default"]},
                        "leaderTemplate": {"type": "object"},
                        "workerTemplate": {"type": "object"},
                        "subGroupPolicy": {"type": "object"},
                    },
                },
            },
        },
    },
}


def test_leaderworkerset():
    jsonschema = pytest.importorskip("jsonschema")
    docs = load_docs(K8S / "leaderworkerset.yaml")
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    svc = next(d for d in docs if d["kind"] == "Service")
    jsonschema.validate(lws, LWS_SCHEMA)
    k8s_validate(svc)
    lwt = lws["spec"]["leaderWorkerTemplate"]
    size = lwt["size"]
    assert size >= 2
    for role in ("leaderTemplate", "workerTemplate"):
        tmpl = lwt[role]
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate",
                      "metadata": {"name": f"lws-{role.lower()}"}, "template": tmpl})
        c = tmpl["spec"]["containers"][0]
        args = dict(a.split("=", 1) for a in c["args"])
        # Multi-node flags wired to what LWS injects.
        assert args["--nnodes"] == "$(LWS_GROUP_SIZE)"
        assert args["--node-rank"] == "$(LWS_WORKER_INDEX)"
        assert args["--master-addr"] == "$(LWS_LEADER_ADDRESS)"
        assert int(args["--master-port"]) > 0
        gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert int(args["--tp"]) == gpus * size
    leader = lwt["leaderTemplate"]
    assert leader["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    # The Service reaches leaders only (workers serve no HTTP).
    sel = svc["spec"]["selector"]
    assert sel.items() <= leader["metadata"]["labels"].items()
    assert not sel.items() <= lwt["workerTemplate"]["metadata"]["labels"].items()


# ---------------------------------------------------------------- slurm

def inner_script():
    text = SBATCH.read_text()
    start = text.index("bash -c '") + len("bash -c '")
    end = text.index("\n    '", start)
    return "#!/bin/bash\n" + text[start:end] + "\n"


def test_slurm_script_syntax(tmp_path):
    text = SBATCH.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text
    assert "srun" in text and "--node-rank" in text and "--master-addr" in text
    inner = tmp_path / "inner.sh"
    inner.write_text(inner_script())
    for f in (SBATCH, inner):
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_slurm_shellcheck(tmp_path):
    tool = shutil.which("shellcheck")
    if not tool:
        pytest.skip("shellcheck not installed (Debian package shellcheck)")
    inner = tmp_path / "inner.sh"
    inner.write_text(inner_script())
    for f in (SBATCH, inner):
        r = subprocess.run([tool, "-s", "bash", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("layout,parallel", [(None, "--tp 16 --pp 1"), ("tp", "--tp 16 --pp 1"),
                                             ("pp", "--tp 8 --pp 2"), ("ep", None)])
def test_slurm_master_is_node_zero(tmp_path, layout, parallel):
    """Runs the batch script with stand-ins for scontrol and srun: the
    master is the first host, each node's command gets its rank, and
    LAYOUT picks tensor parallelism over both nodes or a stage per node
    (anything else is refused)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    # srun stand-in: runs the per-node command once per node, in sequence.
    (bindir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\n"
        "for n in 0 1; do SLURM_NODEID=$n \"$@\" || exit; done\n")
    (bindir / "evalserver").write_text("#!/bin/sh\necho \"ARGS $*\"\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "MODEL": "/m", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_JOB_NUM_NODES": "2", "EXTRA_ARGS": "--max-model-len 4096"}
    if layout:
        env["LAYOUT"] = layout
    r = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, env=env,
                       timeout=60)
    if parallel is None:
        assert r.returncode == 2 and "LAYOUT must be tp or pp" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ARGS ")]
    assert len(lines) == 2
    for rank, ln in enumerate(lines):
        assert f"--node-rank {rank}" in ln
        assert "--master-addr gpu-a" in ln and "--nnodes 2" in ln and parallel in ln
        assert ln.endswith("--max-model-len 4096")
        assert "--api-key-file" not in ln


# ---------------------------------------------------------------- container

def test_containerfile_stages():
    text = (DEPLOY / "Containerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(froms) == 2
    (build_img, build_name), (run_img, _) = froms
    assert "nvidia/cuda:" in build_img and "-devel-" in build_img
    assert "nvidia/cuda:" in run_img and "-runtime-" in run_img
    assert build_name and f"--from={build_name}" in text
    assert "meson setup" in text and "-Dcuda=enabled" in text and "ninja -C" in text
    assert re.search(r"^USER\s+(?!0\b|root\b)", text, re.M)
    assert "ENTRYPOINT" in text
    # meson options it passes exist.
    options = (ROOT / "meson_options.txt").read_text()
    for opt in re.findall(r"-D(\w+)=", text):
        if opt not in ("buildtype", "prefix"):
            assert f"option('{opt}'" in options, opt
