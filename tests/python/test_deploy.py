"""Checks of the deployment files against the binary's contract.

The defaults below are the binary's (docs/configuration.md): a probe path,
port or grace period that drifts from them breaks a deployment silently, so
every file that repeats one is compared here. The linters (shellcheck,
hadolint) and offline Kubernetes schema validation run here too, so one
`pytest tests/python` covers the deploy side. Under CI=true a missing linter
fails instead of skipping.
"""

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile.prod"
ENTRYPOINT = ROOT / "docker" / "entrypoint.prod.sh"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "kubernetes"
SCRIPTS = [ROOT / "scripts" / n for n in ("build-static.sh", "container-smoke.sh", "demo.sh")]

# The binary's defaults (each also a long CLI flag).
DEFAULTS = {
    "PROFILE_BACKEND": "local",
    "LOCAL_PROFILE_DIR": "auth_profiles/active",
    "AUTH_PROFILE_CACHE_DIR": "/tmp/auth_profiles",
    "COORDINATOR_HOST": "0.0.0.0",
    "COORDINATOR_PORT": "2048",
    "BASE_API_PORT": "3100",
    "BASE_STREAM_PORT": "3200",
    "BASE_CAMOUFOX_PORT": "9222",
    "PORT_STEP": "1",
    "HEADLESS": "true",
    "COORDINATOR_LOG_DIR": "logs/coordinator",
    "POOL_SIZE": "2",
    "READY_TIMEOUT_S": "60",
    "CHILD_STOP_GRACE_S": "10",
}
KNOWN_VARS = set(DEFAULTS) | {
    "AUTH_PROFILE_S3_BUCKET",
    "AUTH_PROFILE_S3_PREFIX",
    "AUTH_PROFILE_S3_REGION",
    "AUTH_PROFILE_S3_ENDPOINT",
    "CHILD_COMMAND",
    "CHILD_WORKDIR",
    "AUTH_KEY_FILE_PATH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_PROFILE",
    "PROFILE_LEASES",
    "LEASE_TTL_S",
    "SHUTDOWN_DRAIN_S",
}
# The lease settings' defaults (not in DEFAULTS: the images set no lease ENV).
LEASE_DEFAULTS = {"PROFILE_LEASES": "off", "LEASE_TTL_S": "60"}
PORT = int(DEFAULTS["COORDINATOR_PORT"])
READY_TIMEOUT = int(DEFAULTS["READY_TIMEOUT_S"])
CHILD_GRACE = int(DEFAULTS["CHILD_STOP_GRACE_S"])


def child_ports(settings=None):
    """Every port a child of the fleet binds: the three of each slot.

    The child serves its API on all interfaces, with unprotected routes
    outside /v1/ (one lists the API keys), so none of these may ever be
    published; only COORDINATOR_PORT is.
    """
    s = dict(DEFAULTS)
    s.update(settings or {})
    step, pool = int(s["PORT_STEP"]), int(s["POOL_SIZE"])
    return {
        int(s[base]) + i * step
        for base in ("BASE_API_PORT", "BASE_STREAM_PORT", "BASE_CAMOUFOX_PORT")
        for i in range(pool)
    }


def assert_only_coordinator_port(where, published, settings=None):
    """`published`: the container ports a file exposes or publishes."""
    leaked = set(published) & child_ports(settings)
    assert not leaked, f"{where} exposes child ports {sorted(leaked)}"
    assert set(published) == {PORT}, f"{where} exposes {sorted(set(published))}, only {PORT} may be"


def need_tool(name, path=None):
    """The tool's path; skip without it, except in CI where it must exist."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (CI must install it)")
        pytest.skip(f"{name} is not installed")
    return found


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    return r


def explain(r):
    return f"command: {r.args}\nexit: {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


# ---------------------------------------------------------------- linters


@pytest.mark.parametrize("script", SCRIPTS + [ENTRYPOINT], ids=lambda p: p.name)
def test_shellcheck(script):
    sc = need_tool("shellcheck")
    r = run([sc, "--severity=style", str(script)])
    assert r.returncode == 0, explain(r)


def test_entrypoint_is_posix_sh_and_executable():
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    sc = need_tool("shellcheck")
    # shellcheck as dash: a bashism would be an error here.
    r = run([sc, "--shell=dash", str(ENTRYPOINT)])
    assert r.returncode == 0, explain(r)


def test_hadolint():
    hl = need_tool("hadolint", str(Path(sys.executable).parent / "hadolint"))
    r = run([hl, "--failure-threshold", "style", str(DOCKERFILE)])
    assert r.returncode == 0, explain(r)


# ------------------------------------------------------------- Dockerfile


def dockerfile_stages():
    """{stage name: [(INSTRUCTION, args)]}, continuation lines joined."""
    stages, current = {}, None
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            current = m.group(2) or m.group(1)
            stages[current] = [("FROM", m.group(1))]
        elif current:
            stages[current].append((instr, args.strip()))
    return stages


def env_of(stage):
    env = {}
    for instr, args in stage:
        if instr == "ENV":
            for word in shlex.split(args):
                k, _, v = word.partition("=")
                env[k] = v
    return env


def test_dockerfile_has_the_three_stages_in_order():
    stages = dockerfile_stages()
    assert list(stages) == ["builder", "coordinator", "runtime"]
    assert stages["coordinator"][0] == ("FROM", "scratch")
    assert stages["runtime"][0] == ("FROM", "${CHILD_IMAGE}")


@pytest.mark.parametrize("name", ["coordinator", "runtime"])
def test_dockerfile_stage_contract(name):
    stage = dockerfile_stages()[name]
    env = env_of(stage)
    for k, v in DEFAULTS.items():
        assert env.get(k) == v, f"{name}: ENV {k}={env.get(k)!r}, binary default {v!r}"
    assert ("EXPOSE", str(PORT)) in stage
    users = [a for i, a in stage if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} must run as non-root"
    entry = [a for i, a in stage if i == "ENTRYPOINT"]
    assert entry and entry[-1].startswith("["), "exec-form ENTRYPOINT, so the process gets signals"


def test_dockerfile_exposes_only_the_coordinator_port():
    for name, stage in dockerfile_stages().items():
        exposed = [int(p.split("/")[0]) for i, a in stage if i == "EXPOSE" for p in a.split()]
        if name == "builder":
            assert not exposed
        else:
            assert_only_coordinator_port(f"Dockerfile stage {name}", exposed, env_of(stage))


def test_runtime_healthcheck_uses_live_and_entrypoint_execs():
    stage = dockerfile_stages()["runtime"]
    hc = [a for i, a in stage if i == "HEALTHCHECK"]
    assert hc and "/live" in hc[0] and "COORDINATOR_PORT" in hc[0]
    assert ("ENTRYPOINT", '["/usr/local/bin/entrypoint.prod.sh"]') in stage
    assert any(i == "ARG" and a.startswith("CHILD_WORKDIR") for i, a in stage)
    assert dockerfile_stages()["runtime"] and "exec \"$BIN\"" in ENTRYPOINT.read_text()


def test_smoke_image_mirrors_the_coordinator_stage():
    """container-smoke.sh builds its own scratch image (no base image can be
    pulled here); it must carry the coordinator stage's ENV and user."""
    smoke = (ROOT / "scripts" / "container-smoke.sh").read_text()
    env = env_of(dockerfile_stages()["coordinator"])
    env.pop("SSL_CERT_FILE")  # no TLS in the smoke run
    env["CHILD_STOP_GRACE_S"] = "$CHILD_GRACE"
    for k, v in env.items():
        assert f"{k}={v}" in smoke, f"container-smoke.sh lacks ENV {k}={v}"
    assert "USER 65532:65532" in smoke and "WORKDIR /app" in smoke
    assert "CHILD_GRACE=10 " in smoke


def test_smoke_publishes_only_the_coordinator_port():
    smoke = (ROOT / "scripts" / "container-smoke.sh").read_text()
    runs = [line for line in re.sub(r"\\\n", " ", smoke).splitlines() if "podman run" in line]
    assert runs, "container-smoke.sh runs no container"
    published = [p for line in runs for p in re.findall(r"\s(?:-p|--publish)[ =]\"?([^\s\"]+)", line)]
    assert published, "container-smoke.sh publishes no port"
    assert_only_coordinator_port("container-smoke.sh", [int(p.rsplit(":", 1)[1]) for p in published])
    assert "TESTCHILD_REAL_CHILD=1" in smoke, "the smoke run must use the test child's real-child mode"


# ---------------------------------------------------------------- compose


def test_compose_is_complete():
    doc = yaml.safe_load(COMPOSE.read_text())
    svc = doc["services"]["coordinator"]
    assert f"{PORT}:{PORT}" in svc["ports"]
    env = {k: str(v) for k, v in svc["environment"].items()}
    assert not set(env) - KNOWN_VARS, f"unknown variables: {set(env) - KNOWN_VARS}"
    assert env["PROFILE_BACKEND"] == "s3" and env["AUTH_PROFILE_S3_BUCKET"]
    for k in ("COORDINATOR_PORT", "BASE_API_PORT", "BASE_STREAM_PORT", "CHILD_STOP_GRACE_S"):
        assert env[k] == DEFAULTS[k]
    # Credentials as a secret, read through the shared-credentials file.
    assert svc["secrets"] == ["aws_credentials"]
    assert "aws_credentials" in doc["secrets"]
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws_credentials"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    # The cache volume sits where hydration writes.
    assert f"cache:{env['AUTH_PROFILE_CACHE_DIR']}" in svc["volumes"]
    assert "cache" in doc["volumes"]
    # Docker's stop timeout must outlast the children's grace.
    grace = int(re.fullmatch(r"(\d+)s", svc["stop_grace_period"]).group(1))
    assert grace > int(env["CHILD_STOP_GRACE_S"]) + int(env.get("SHUTDOWN_DRAIN_S", 30))
    assert any("/live" in str(part) for part in svc["healthcheck"]["test"])
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.prod"
    assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


def compose_container_ports(entry):
    """The container ports of one compose `ports:` entry, short or long form."""
    if isinstance(entry, dict):
        target = str(entry["target"])
    else:
        target = str(entry).split("/")[0].rsplit(":", 1)[-1]
    lo, _, hi = target.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def test_compose_publishes_only_the_coordinator_port():
    doc = yaml.safe_load(COMPOSE.read_text())
    for name, svc in doc["services"].items():
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        published = [p for e in svc.get("ports", []) for p in compose_container_ports(e)]
        published += [p for e in svc.get("expose", []) for p in compose_container_ports(e)]
        assert_only_coordinator_port(f"compose service {name}", published, env)
        assert svc.get("network_mode") != "host", "host networking would put the child ports on the host"


# ------------------------------------------------------------- kubernetes


OVERLAYS = K8S_DIR / "overlays"
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"


def kustomization(kdir):
    """The kustomization of `kdir`, checked to use plain resources only.

    The manifests use nothing of kustomize but `resources` (files, and
    directories holding a kustomization): no patches, generators, name
    prefixes or common labels. So rendering is reading the files, and this
    module's checks see exactly what `kubectl apply -k` sends. A field that
    would transform the resources fails here, rather than being ignored by
    the offline render.
    """
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == KUSTOMIZE_API and kust["kind"] == "Kustomization", kdir
    extra = set(kust) - {"apiVersion", "kind", "resources"}
    assert not extra, f"{kdir}: {sorted(extra)} would transform the resources; the offline render reads files only"
    return kust


def render(kdir, _above=()):
    """`kubectl kustomize kdir`, offline, for plain resources: the documents
    of every listed file, directories recursively, each resource once."""
    kdir = kdir.resolve()
    assert kdir not in _above, f"kustomization cycle through {kdir}"
    docs = []
    for entry in kustomization(kdir)["resources"]:
        path = (kdir / entry).resolve()
        if path.is_dir():
            docs += render(path, _above + (kdir,))
        else:
            assert path.is_file(), f"{kdir}: resource {entry} does not exist"
            # kustomize loads files only from inside the kustomization's root.
            assert path.is_relative_to(kdir), f"{kdir}: {entry} lies outside the kustomization"
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"{kdir}: resources listed twice: {dupes}"
    return docs


# overlays/<variant>: single (one replica, Recreate, no leases) and fleet-s3
# (several replicas over one bucket, profile leases, rolling updates).
VARIANTS = ["single", "fleet-s3"]
FLEET = "fleet-s3"
# The oldest Kubernetes the README names (the fleet's preStop `sleep`).
K8S_MIN_VERSION = "1.30.0"


def k8s_docs(variant):
    return render(OVERLAYS / variant)


def k8s_kind(variant, kind):
    found = [d for d in k8s_docs(variant) if d["kind"] == kind]
    assert len(found) == 1, f"{variant}: expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_schema_valid(variant):
    kv = pytest.importorskip("kubernetes_validate")
    for d in k8s_docs(variant):
        for version in (K8S_MIN_VERSION, kv.utils.latest_version()):
            kv.validate(d, version, strict=True)


def test_every_manifest_is_in_a_kustomization():
    """Each directory's kustomization lists every manifest beside it, and
    each manifest is in some variant: no file that nothing applies."""
    listed = set()
    for kfile in K8S_DIR.rglob("kustomization.yaml"):
        kdir = kfile.parent
        entries = kustomization(kdir)["resources"]
        files = {f.name for f in kdir.glob("*.yaml")} - {"kustomization.yaml"}
        assert files <= set(entries), f"{kdir} does not list {sorted(files - set(entries))}"
        listed |= {(kdir / f).resolve() for f in files}
    rendered = set()
    for variant in VARIANTS:
        for kdir in [OVERLAYS / variant, K8S_DIR / "base"]:
            rendered |= {(kdir / e).resolve() for e in kustomization(kdir)["resources"]}
    assert listed <= rendered, f"manifests in no variant: {sorted(map(str, listed - rendered))}"
    assert sorted(p.name for p in OVERLAYS.iterdir()) == sorted(VARIANTS)


def test_default_kustomization_is_the_single_variant():
    """`kubectl apply -k deploy/kubernetes`, the command of earlier
    releases, still creates the single-replica variant and nothing else."""
    assert kustomization(K8S_DIR)["resources"] == ["overlays/single"]
    assert render(K8S_DIR) == k8s_docs("single")


@pytest.mark.parametrize("variant", VARIANTS)
def test_offline_render_matches_kustomize(variant):
    """Where kubectl (or kustomize) is installed, its render equals ours.
    Skipped without it, in CI too: scripts/test.sh does not install it, and
    the offline render refuses every transforming field anyway."""
    tool = shutil.which("kubectl") or shutil.which("kustomize")
    if not tool:
        pytest.skip("neither kubectl nor kustomize is installed")
    sub = "kustomize" if tool.endswith("kubectl") else "build"
    r = run([tool, sub, str(OVERLAYS / variant)])
    assert r.returncode == 0, explain(r)
    key = lambda d: (d["kind"], d["metadata"]["name"])
    theirs = sorted((d for d in yaml.safe_load_all(r.stdout) if d), key=key)
    assert theirs == sorted(k8s_docs(variant), key=key)


def pod_container(variant):
    dep = k8s_kind(variant, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return dep, pod, c


def config(variant):
    return k8s_kind(variant, "ConfigMap")["data"]


def resolve_port(c, port):
    if isinstance(port, int):
        return port
    (p,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return p


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_probes_match_the_binary(variant):
    _, pod, c = pod_container(variant)
    live, ready, start = c["livenessProbe"], c["readinessProbe"], c["startupProbe"]
    assert live["httpGet"]["path"] == "/live"
    assert ready["httpGet"]["path"] == "/ready"
    assert start["httpGet"]["path"] in ("/ready", "/live")
    for p in (live, ready, start):
        assert resolve_port(c, p["httpGet"]["port"]) == PORT
    # The startup probe must allow a child its whole readiness timeout.
    window = start.get("initialDelaySeconds", 0) + start["periodSeconds"] * start["failureThreshold"]
    assert window > READY_TIMEOUT, f"startup window {window}s <= READY_TIMEOUT_S {READY_TIMEOUT}s"


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_security(variant):
    _, pod, c = pod_container(variant)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    req = c["resources"]["requests"]
    assert req["cpu"] and req["memory"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_cache_dir_is_the_pods_own(variant):
    """AUTH_PROFILE_CACHE_DIR is an emptyDir: each pod stages, and keeps
    its working copies and profile book, in a directory of its own."""
    _, pod, c = pod_container(variant)
    cache = config(variant).get("AUTH_PROFILE_CACHE_DIR", DEFAULTS["AUTH_PROFILE_CACHE_DIR"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in vol, f"{variant}: the cache dir must be an emptyDir, not shared storage: {vol}"


def test_k8s_single_is_one_replica_recreated_without_leases():
    """Two pods of the single variant would drive the same accounts twice
    (it holds no leases): one replica, and Recreate, even during a rollout."""
    dep, pod, _ = pod_container("single")
    cm = config("single")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert cm.get("PROFILE_LEASES", "off") == "off"
    assert not [d for d in k8s_docs("single") if d["kind"] == "PodDisruptionBudget"]
    assert "lifecycle" not in pod["containers"][0], "no preStop: the variant stays as it was"


def source_number(path, pattern, what):
    """A constant of the coordinator's stop sequence, read from its source,
    so that the grace arithmetic below cannot drift from the binary."""
    m = re.search(pattern, (ROOT / path).read_text())
    assert m, (
        f"{path} no longer has {what} ({pattern!r}): the stop sequence changed; redo the "
        "terminationGracePeriodSeconds arithmetic in deploy/kubernetes/overlays/*/deployment.yaml"
    )
    return int(m.group(1)) if m.groups() else None


def stop_budget(variant):
    """Worst-case seconds from the kubelet's stop to the coordinator's exit.

    preStop sleep (before the SIGTERM), the shutdown drain (requests in
    flight and queued, at most SHUTDOWN_DRAIN_S), the wait for the slots
    (CHILD_STOP_GRACE_S plus a slack), with leases the wait for their
    release, and the HTTP stop.
    """
    _, pod, c = pod_container(variant)
    cm = config(variant)
    default_drain = source_number(
        "src/config/table.rs",
        r'env: "SHUTDOWN_DRAIN_S",\s*default: Some\("(\d+)"\)',
        "the default shutdown drain",
    )
    source_number(
        "src/app.rs",
        r"let hurried = drain\(started\.sup\.dispatch\(\), s\.sigs, cfg\.shutdown_drain\);",
        "the shutdown drain before the children stop",
    )
    slack_ms = source_number(
        "src/app.rs", r"Instant::now\(\) \+ grace \+ Duration::from_millis\((\d+)\)", "the wait for the slots"
    )
    lease_s = source_number(
        "src/app.rs", r"self\.done\.recv_timeout\(Duration::from_secs\((\d+)\)\)", "the wait for the lease release"
    )
    http_ms = source_number(
        "src/app.rs", r"http\.stop\(Instant::now\(\) \+ Duration::from_millis\((\d+)\)\)", "the HTTP stop"
    )
    pre_stop = c.get("lifecycle", {}).get("preStop")
    if pre_stop:
        assert set(pre_stop) == {"sleep"}, f"{variant}: a preStop other than sleep has no known length: {pre_stop}"
        pre_stop_s = pre_stop["sleep"]["seconds"]
    else:
        pre_stop_s = 0
    grace = int(cm.get("CHILD_STOP_GRACE_S", CHILD_GRACE))
    drain_s = int(cm.get("SHUTDOWN_DRAIN_S", default_drain))
    leases = cm.get("PROFILE_LEASES", "off") == "s3"
    return pre_stop_s + drain_s + grace + slack_ms / 1000 + (lease_s if leases else 0) + http_ms / 1000


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_grace_period_covers_the_stop(variant):
    _, pod, _ = pod_container(variant)
    budget = stop_budget(variant)
    period = pod["terminationGracePeriodSeconds"]
    assert period > budget, f"{variant}: terminationGracePeriodSeconds {period} <= worst-case stop {budget:.2f} s"


def test_k8s_fleet_stop_numbers_match_the_comment():
    """The deployment's comment states the sum; keep it the same number."""
    text = (OVERLAYS / FLEET / "deployment.yaml").read_text()
    _, pod, _ = pod_container(FLEET)
    period = pod["terminationGracePeriodSeconds"]
    assert f"= {stop_budget(FLEET):.2f} s  ->  terminationGracePeriodSeconds: {period}" in text


def percent_or_int(value, replicas, round_up):
    if isinstance(value, int):
        return value
    n = int(value.rstrip("%")) * replicas / 100
    return int(-(-n // 1)) if round_up else int(n)


def test_k8s_fleet_rolls_one_pod_at_a_time_without_surge():
    """maxSurge 0: an old pod is stopped (releasing its profiles) before its
    replacement is counted; an extra pod that must be ready before any old
    one stops could find every profile leased and stall the rollout."""
    dep, _, _ = pod_container(FLEET)
    replicas = dep["spec"]["replicas"]
    assert replicas > 1
    strategy = dep["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    ru = strategy["rollingUpdate"]
    assert percent_or_int(ru["maxSurge"], replicas, round_up=True) == 0
    unavailable = percent_or_int(ru["maxUnavailable"], replicas, round_up=False)
    assert 1 <= unavailable < replicas, "a rollout must make progress and keep a pod serving"


def test_k8s_fleet_pdb_selects_the_pods():
    dep, _, _ = pod_container(FLEET)
    (pdb,) = [d for d in k8s_docs(FLEET) if d["kind"] == "PodDisruptionBudget"]
    sel = pdb["spec"]["selector"]
    assert not sel.get("matchExpressions")
    assert sel["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert sel["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    replicas = dep["spec"]["replicas"]
    spec = pdb["spec"]
    if "maxUnavailable" in spec:
        allowed = percent_or_int(spec["maxUnavailable"], replicas, round_up=True)
    else:
        allowed = replicas - percent_or_int(spec["minAvailable"], replicas, round_up=True)
    # A drain must make progress, and a pod must stay.
    assert 1 <= allowed < replicas, f"the budget allows {allowed} of {replicas} pods down"
    # A pod that is not ready serves nothing: it must not block a drain.
    assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_k8s_fleet_leases_profiles_from_s3():
    _, pod, c = pod_container(FLEET)
    cm = config(FLEET)
    assert cm["PROFILE_BACKEND"] == "s3" and cm["AUTH_PROFILE_S3_BUCKET"]
    assert cm["PROFILE_LEASES"] == "s3"
    # The coordinator's TTL check (fleet::lease::Timing::check): a holder keeps
    # its child TTL - TTL/6 - grace after a renewal, which must exceed TTL/3
    # (the renewal period) by a second.
    ttl = int(cm.get("LEASE_TTL_S", LEASE_DEFAULTS["LEASE_TTL_S"]))
    grace = int(cm.get("CHILD_STOP_GRACE_S", CHILD_GRACE))
    assert ttl - ttl / 6 - grace >= ttl / 3 + 1, f"LEASE_TTL_S={ttl} is refused with CHILD_STOP_GRACE_S={grace}"
    # One id per pod: never in the shared ConfigMap, always the pod's name.
    assert "REPLICA_ID" not in cm
    (rid,) = [e for e in c["env"] if e["name"] == "REPLICA_ID"]
    assert rid == {"name": "REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_k8s_fleet_pod_is_the_single_pod_plus_the_fleet_changes():
    """Two full Deployments, no patches: everything but the fleet's own
    changes must stay the same in both (security, resources, volumes, ...)."""
    import copy

    single, fleet = (copy.deepcopy(k8s_kind(v, "Deployment")) for v in ("single", FLEET))
    for dep in (single, fleet):
        for k in ("replicas", "strategy"):
            dep["spec"].pop(k)
        pod = dep["spec"]["template"]["spec"]
        pod.pop("terminationGracePeriodSeconds")
        c = pod["containers"][0]
        assert c["startupProbe"]["httpGet"].pop("path")
    fpod = fleet["spec"]["template"]["spec"]
    fpod.pop("topologySpreadConstraints")
    fc = fpod["containers"][0]
    fc.pop("lifecycle")
    fc["env"] = [e for e in fc["env"] if e["name"] != "REPLICA_ID"]
    assert fleet == single


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_config_and_service(variant):
    _, pod, c = pod_container(variant)
    cm = k8s_kind(variant, "ConfigMap")
    assert c["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    data = cm["data"]
    assert not set(data) - KNOWN_VARS, f"unknown variables: {set(data) - KNOWN_VARS}"
    defaults = {**DEFAULTS, **LEASE_DEFAULTS}
    for k, v in data.items():
        if k in defaults and k not in ("PROFILE_BACKEND", "PROFILE_LEASES"):
            assert v == defaults[k], f"ConfigMap {k}={v!r}, binary default {defaults[k]!r}"
    svc = k8s_kind(variant, "Service")
    labels = k8s_kind(variant, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (sp,) = svc["spec"]["ports"]
    assert resolve_port(c, sp["targetPort"]) == PORT
    assert pod["serviceAccountName"] == k8s_kind(variant, "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_publishes_only_the_coordinator_port(variant):
    _, pod, c = pod_container(variant)
    cm = config(variant)
    assert not pod.get("hostNetwork"), "host networking would put the child ports on the node"
    for ctr in pod["containers"] + pod.get("initContainers", []):
        assert not any("hostPort" in p for p in ctr.get("ports", [])), "no hostPort"
    assert_only_coordinator_port("Deployment containerPort", [p["containerPort"] for p in c["ports"]], cm)
    svc = k8s_kind(variant, "Service")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    targets = [resolve_port(c, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]]
    assert_only_coordinator_port("Service targetPort", targets, cm)
    assert_only_coordinator_port("Service port", [p["port"] for p in svc["spec"]["ports"]], cm)


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_network_policy_admits_only_the_coordinator_port(variant):
    _, pod, c = pod_container(variant)
    cm = config(variant)
    np = k8s_kind(variant, "NetworkPolicy")
    spec = np["spec"]
    labels = k8s_kind(variant, "Deployment")["spec"]["template"]["metadata"]["labels"]
    sel = spec["podSelector"]
    assert sel.get("matchLabels"), "the policy must select the coordinator pods, not every pod"
    assert not sel.get("matchExpressions")
    assert sel["matchLabels"].items() <= labels.items(), "the policy does not select the coordinator pods"
    assert "Ingress" in spec["policyTypes"]
    rules = spec["ingress"]
    assert rules, "an empty ingress list would block the coordinator too"
    allowed = []
    for rule in rules:
        # A rule without ports would admit every port, the children's too.
        assert rule.get("ports"), f"ingress rule without ports admits everything: {rule}"
        for p in rule["ports"]:
            assert p.get("protocol", "TCP") == "TCP"
            assert "endPort" not in p, "a port range could reach the children"
            allowed.append(resolve_port(c, p["port"]))
    assert_only_coordinator_port("NetworkPolicy ingress", allowed, cm)


# ------------------------------------------------------------- entrypoint
#
# The entrypoint execs the coordinator and nothing else: the coordinator
# hydrates from its own source, so S3 write-back and reloads reach that
# source (an earlier entrypoint forced PROFILE_BACKEND=local at the staged
# copy, which turned both off in production).

FAKE_BIN = textwrap.dedent(
    """\
    #!/bin/sh
    # Stand-in for aistudioproxy: prints what the coordinator would see, or
    # fails as told by $FAKE_*.
    if [ "${1:-}" = --hydrate-only ]; then
        echo "the entrypoint must not hydrate: the coordinator does" >&2
        exit 99
    fi
    if [ -n "${FAKE_RC:-}" ]; then
        printf '%s\\n' "$FAKE_STDERR" >&2
        exit "$FAKE_RC"
    fi
    printf 'PID=%s\\n' "$$"
    printf 'ARGS=%s\\n' "$*"
    printf 'PROFILE_BACKEND=%s\\n' "${PROFILE_BACKEND-<unset>}"
    printf 'LOCAL_PROFILE_DIR=%s\\n' "${LOCAL_PROFILE_DIR-<unset>}"
    printf 'AUTH_KEY_FILE_PATH=%s\\n' "${AUTH_KEY_FILE_PATH-<unset>}"
    """
)


def run_entrypoint(tmp_path, args=(), bin_path=None, **env):
    fake = tmp_path / "fake-aistudioproxy"
    if bin_path is None:
        fake.write_text(FAKE_BIN)
        fake.chmod(0o755)
        bin_path = fake
    full = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "AISTUDIOPROXY_BIN": str(bin_path)}
    full.update(env)
    sh = shutil.which("dash") or "/bin/sh"
    r = subprocess.run([sh, str(ENTRYPOINT), *args], env=full, capture_output=True, text=True, timeout=30)
    seen = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return r, seen


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_entrypoint_execs_the_coordinator_on_its_own_source(tmp_path, backend):
    r, seen = run_entrypoint(
        tmp_path,
        ["--", "python3", "launch_camoufox.py"],
        PROFILE_BACKEND=backend,
        LOCAL_PROFILE_DIR="/profiles/active",
        AUTH_KEY_FILE_PATH="/run/secrets/key.txt",
    )
    assert r.returncode == 0, explain(r)
    assert seen["PROFILE_BACKEND"] == backend, "the backend reaches the coordinator unchanged"
    assert seen["LOCAL_PROFILE_DIR"] == "/profiles/active"
    assert seen["AUTH_KEY_FILE_PATH"] == "/run/secrets/key.txt"
    assert seen["ARGS"] == "-- python3 launch_camoufox.py"
    assert r.stderr == "", "the entrypoint adds no output of its own"
    assert list(tmp_path.iterdir()) == [tmp_path / "fake-aistudioproxy"], "nothing left behind"


def test_entrypoint_leaves_unset_settings_unset(tmp_path):
    r, seen = run_entrypoint(tmp_path)
    assert r.returncode == 0, explain(r)
    assert seen["PROFILE_BACKEND"] == seen["LOCAL_PROFILE_DIR"] == "<unset>"
    assert seen["AUTH_KEY_FILE_PATH"] == "<unset>"


@pytest.mark.parametrize("rc", [1, 2])
def test_entrypoint_fails_fast_with_the_binarys_line(tmp_path, rc):
    line = "aistudioproxy: No auth profiles found in /profiles/active"
    r, _ = run_entrypoint(tmp_path, FAKE_RC=str(rc), FAKE_STDERR=line)
    assert r.returncode == rc, explain(r)
    assert r.stderr.strip() == line, "the entrypoint must add nothing to the binary's one line"


def find_real_binary():
    """$AISTUDIOPROXY_TEST_BIN, else the newest build (a static build left
    from an older commit must not stand in for the current source)."""
    builds = [ROOT / "target" / d / "aistudioproxy" for d in ("static", "debug", "release")]
    builds = sorted((b for b in builds if b.is_file()), key=lambda b: b.stat().st_mtime, reverse=True)
    for p in [os.environ.get("AISTUDIOPROXY_TEST_BIN"), *builds]:
        if p and Path(p).is_file():
            r = run([str(p), "--help"])
            if "hydrate-only" in r.stdout + r.stderr:
                return Path(p)
    return None


def real_binary():
    real = find_real_binary()
    if real is None:
        pytest.skip("no aistudioproxy binary built yet")
    return real


def test_entrypoint_with_the_real_binary_fails_with_its_one_line(tmp_path):
    """The real coordinator behind the entrypoint: an empty profile source
    ends the container at once with the binary's line and code 1."""
    real = real_binary()
    (tmp_path / "src" / "active").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    r, _ = run_entrypoint(
        tmp_path,
        bin_path=real,
        PROFILE_BACKEND="local",
        LOCAL_PROFILE_DIR=str(tmp_path / "src" / "active"),
        AUTH_PROFILE_CACHE_DIR=str(tmp_path / "cache"),
        CHILD_COMMAND="true",
        CHILD_WORKDIR=str(tmp_path / "work"),
        COORDINATOR_PORT="0",
    )
    assert r.returncode == 1, explain(r)
    errors = [l for l in r.stderr.splitlines() if l.startswith("aistudioproxy:")]
    assert errors == [f"aistudioproxy: No auth profiles found in {tmp_path / 'src' / 'active'}"], explain(r)


def test_entrypoint_with_the_real_binary_stops_on_sigterm_during_an_s3_download(tmp_path):
    """What the old entrypoint did by running hydration in the background:
    a stop during a long S3 download takes effect at once. The coordinator
    now does it itself (its SIGTERM handler is in place before hydration,
    so it holds as PID 1 too): 143 against an endpoint that never answers."""
    import socket
    import time

    real = real_binary()
    (tmp_path / "work").mkdir()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    env = {
        "PATH": os.environ["PATH"],
        "AISTUDIOPROXY_BIN": str(real),
        "PROFILE_BACKEND": "s3",
        "AUTH_PROFILE_S3_BUCKET": "b",
        "AUTH_PROFILE_S3_ENDPOINT": f"http://127.0.0.1:{hole.getsockname()[1]}",
        "AUTH_PROFILE_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIATEST",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AUTH_PROFILE_CACHE_DIR": str(tmp_path / "cache"),
        "CHILD_COMMAND": "true",
        "CHILD_WORKDIR": str(tmp_path / "work"),
    }
    sh = shutil.which("dash") or "/bin/sh"
    p = subprocess.Popen([sh, str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        # The exec keeps the pid: once the coordinator runs, it is p.pid.
        while "aistudioproxy" not in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace"):
            assert time.monotonic() < deadline, "the entrypoint never exec'd the coordinator"
            time.sleep(0.01)
        time.sleep(0.3)  # into the listing request, which never gets an answer
        assert p.poll() is None, p.communicate()
        sent = time.monotonic()
        p.terminate()
        _, err = p.communicate(timeout=5)
        assert p.returncode == 143, err
        assert time.monotonic() - sent < 1.0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        hole.close()
