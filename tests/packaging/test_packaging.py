"""Packaging checks with tools nobody here wrote: Helm's Go SDK (helm-python-sdk),
kubernetes-validate and hadolint. Run by the README's test command."""
import copy
import pathlib
import subprocess
import sys

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
render_manifests = __import__("render-manifests")

CHART = ROOT / "charts" / "csr-warden"
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
KUBE_VERSION = "1.34.0"
VENV_BIN = pathlib.Path(sys.executable).parent

# Every documented key changed.
FULL_VALUES = {
    "image": {"repository": "registry.example.com/csr-warden", "tag": "9.9.9", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "replicaCount": 3,
    "leaderElection": {"enabled": False, "leaseDurationSeconds": 30},
    "podDisruptionBudget": {"enabled": False},
    "reloadIntervalMs": 2000,
    "concurrency": 4,
    "requesters": {"users": ["jane", "maria"], "groups": ["developers"]},
    "resyncIntervalSeconds": 120,
    "watchTimeoutSeconds": 200,
    "metrics": {"service": {"enabled": False},
                "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}},
    "namespace": {"create": False},
    "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
    "caSecretName": "my-ca",
    "signers": [
        {"name": "example.com/internal-client", "role": "approveAndSign", "caSecretName": "internal-ca",
         "allowClusterCA": False},
        {"name": "kubernetes.io/kubelet-serving", "role": "approve"},
        {"name": "example.com/legacy", "role": "sign"},
    ],
    "podCertificates": [{"signerName": "example.com/workload-identity", "caSecretName": "workload-ca",
                         "allow": [{"namespace": "apps"}], "trustBundle": True}],
    "pkcs11": {"module": "/opt/hsm/lib/libvendor-pkcs11.so",
               "mounts": [{"name": "hsm-client", "mountPath": "/opt/hsm",
                           "volume": {"hostPath": {"path": "/opt/hsm", "type": "Directory"}}}],
               "env": [{"name": "VENDOR_PKCS11_CONF", "value": "/opt/hsm/etc/client.conf"}]},
    "policy": {
        "signerNames": ["example.com/internal-client"],
        "forbiddenGroups": ["system:masters", "cluster-admins"],
        "kubelet": {"client": False, "serving": False},
        "allowList": [{"commonNamePattern": "^ci-[a-z0-9-]+$", "groups": ["ci"],
                       "requesters": {"users": ["system:serviceaccount:ci:minter"], "groups": []}}],
        "unmatched": "deny",
        "signing": {"defaultExpirationSeconds": 3600, "maxExpirationSeconds": 7200},
    },
    "logFormat": "text",
    "logLevel": "csr_warden=debug,info",
    "dryRun": True,
    "httpPort": 9090,
    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
    "extraLabels": {"team": "platform"},
    "extraAnnotations": {"example.com/audit": "yes"},
    "podAnnotations": {"prometheus.io/scrape": "false"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "node.cloudprovider.kubernetes.io/uninitialized", "operator": "Exists"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "priorityClassName": "system-cluster-critical",
    "hostNetwork": True,
}


def manifest_objects():
    objects = []
    for path in MANIFESTS:
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def by_kind(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    assert found, f"no {kind}"
    return found


def deployment(objects):
    return by_kind(objects, "Deployment")[0]


def named(objects, kind, name):
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"no single {kind} {name}"
    return found[0]


def test_full_values_change_every_documented_key():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(FULL_VALUES) == set(defaults), "FULL_VALUES must cover every key of values.yaml"


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "every-key"])
def test_chart_lints_strictly(values):
    report = helm.lint(str(CHART), values, strict=True, namespace="csr-warden", kube_version="v" + KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert not problems, problems


def test_schema_rejects_unknown_and_wrong_values():
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(FULL_VALUES)
    for bad in ({"replicaCount": "two"}, {"nope": 1}, {"policy": {"signerNames": ["x"]}},
                {"logFormat": "xml"}, {"policy": {"signerNames": ["a.io/b"], "unmatched": "maybe"}}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


def test_manifests_are_the_chart_rendered_with_defaults():
    def key(o):
        return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
    assert sorted(manifest_objects(), key=key) == sorted(render_manifests.render(), key=key), (
        "manifests/ drifted from the chart: run scripts/render-manifests.py")


def test_full_values_reach_the_objects():
    objects = render_manifests.render(copy.deepcopy(FULL_VALUES))
    assert not [o for o in objects if o["kind"] in ("Namespace", "PodDisruptionBudget", "Service")]
    monitor = by_kind(objects, "ServiceMonitor")[0]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    deploy = deployment(objects)
    spec = deploy["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"] == "registry.example.com/csr-warden:9.9.9"
    assert "--dry-run" in container["args"] and "--log-format=text" in container["args"]
    assert "--leader-election" not in container["args"] and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert "--reload-interval-ms=2000" in container["args"]
    assert "--concurrency=4" in container["args"]
    assert "--resync-interval-seconds=120" in container["args"]
    assert "--watch-timeout-seconds=200" in container["args"]
    assert container["ports"][0]["containerPort"] == 9090
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-cluster-critical"
    assert spec["tolerations"] == FULL_VALUES["tolerations"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {"ca": "my-ca", "signer-ca-0": "internal-ca", "signer-ca-1": "workload-ca"}
    hsm = [v for v in spec["volumes"] if v["name"] == "hsm-client"]
    assert hsm == [{"name": "hsm-client", "hostPath": {"path": "/opt/hsm", "type": "Directory"}}]
    assert {"name": "hsm-client", "mountPath": "/opt/hsm", "readOnly": True} in container["volumeMounts"]
    assert {"name": "VENDOR_PKCS11_CONF", "value": "/opt/hsm/etc/client.conf"} in container["env"]
    assert deploy["metadata"]["labels"]["team"] == "platform"
    assert signer_rules(objects) == {"approve": ["example.com/internal-client", "kubernetes.io/kubelet-serving"],
                                     "sign": ["example.com/internal-client", "example.com/legacy",
                                              "example.com/workload-identity"],
                                     "attest": ["example.com/workload-identity"]}
    policy = yaml.safe_load(by_kind(objects, "ConfigMap")[0]["data"]["policy.yaml"])
    expected = {k: v for k, v in FULL_VALUES["policy"].items() if k != "signerNames"}
    expected["signers"] = [
        {"name": "example.com/internal-client", "role": "approveAndSign",
         "ca": {"cert": "/etc/csr-warden/cas/internal-ca/tls.crt", "key": "/etc/csr-warden/cas/internal-ca/tls.key"}},
        {"name": "kubernetes.io/kubelet-serving", "role": "approve"},
        {"name": "example.com/legacy", "role": "sign"},
    ]
    expected["podCertificates"] = [{
        "signerName": "example.com/workload-identity", "trustDomain": "cluster.local",
        "allow": [{"namespace": "apps"}], "trustBundle": True,
        "ca": {"cert": "/etc/csr-warden/cas/workload-ca/tls.crt", "key": "/etc/csr-warden/cas/workload-ca/tls.key"}}]
    assert policy == expected


def signer_rules(objects):
    """verb -> resourceNames of the ClusterRole's `signers` rules (CSR signers, then pod signers)."""
    role = named(objects, "ClusterRole", "csr-warden")
    rules = [r for r in role["rules"] if r["resources"] == ["signers"]]
    assert all(len(r["verbs"]) == 1 for r in rules), rules
    verbs = {}
    for r in rules:
        verbs.setdefault(r["verbs"][0], []).extend(r["resourceNames"])
    return verbs


def subresource_verbs(objects):
    role = named(objects, "ClusterRole", "csr-warden")
    return {r["resources"][0] for r in role["rules"] if r["resources"][0].startswith("certificatesigningrequests/")}


def render_with_signers(signers):
    values = {"signers": signers}
    return render_manifests.render(values)


def validate_with_the_binary(tmp_path, objects):
    path = tmp_path / "policy.yaml"
    path.write_text(by_kind(objects, "ConfigMap")[0]["data"]["policy.yaml"])
    binary = ROOT / "target" / "release" / "csr-warden"
    result = subprocess.run([str(binary), "policy", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(path.read_text())


def kubernetes_validate(tmp_path, objects):
    out = tmp_path / "rendered.yaml"
    out.write_text("---\n".join(yaml.safe_dump(o) for o in objects if o["kind"] != "ServiceMonitor"))
    result = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_approve_only_signers_get_approve_rbac_and_no_ca_at_all(tmp_path):
    objects = render_with_signers([{"name": "kubernetes.io/kubelet-serving", "role": "approve"},
                                   {"name": "kubernetes.io/kube-apiserver-client-kubelet", "role": "approve"}])
    assert signer_rules(objects) == {"approve": ["kubernetes.io/kubelet-serving",
                                                 "kubernetes.io/kube-apiserver-client-kubelet"]}
    assert subresource_verbs(objects) == {"certificatesigningrequests/approval"}
    spec = deployment(objects)["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "secret" in v], "no CA Secret is mounted"
    assert not [a for a in spec["containers"][0]["args"] if a.startswith("--ca-")]
    policy = validate_with_the_binary(tmp_path, objects)
    assert policy["signers"] == [{"name": "kubernetes.io/kubelet-serving", "role": "approve"},
                                 {"name": "kubernetes.io/kube-apiserver-client-kubelet", "role": "approve"}]
    assert "signerNames" not in policy
    kubernetes_validate(tmp_path, objects)


def test_sign_only_signer_gets_sign_and_status_rbac_and_its_own_ca_mounted(tmp_path):
    objects = render_with_signers([{"name": "example.com/legacy", "role": "sign", "caSecretName": "legacy-ca"}])
    assert signer_rules(objects) == {"sign": ["example.com/legacy"]}
    assert subresource_verbs(objects) == {"certificatesigningrequests/status"}
    role = named(objects, "ClusterRole", "csr-warden")
    assert not [r for r in role["rules"] if r["resources"] == ["nodes"]], "nothing decides: no Node facts"
    assert [r for r in role["rules"] if r["resources"] == ["subjectaccessreviews"]], (
        "the signer asks the privilege ceiling's SubjectAccessReviews")
    assert not [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("apiserver-addresses")]
    container = deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    volumes = deployment(objects)["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == ["legacy-ca"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["signer-ca-0"] == "/etc/csr-warden/cas/legacy-ca"
    policy = validate_with_the_binary(tmp_path, objects)
    assert policy["signers"][0]["ca"]["cert"] == "/etc/csr-warden/cas/legacy-ca/tls.crt"
    kubernetes_validate(tmp_path, objects)


def test_approve_and_sign_with_own_ca_gets_both_and_shares_a_secret_once(tmp_path):
    objects = render_with_signers([
        {"name": "example.com/team-client", "caSecretName": "team-ca", "allowClusterCA": True},
        {"name": "example.com/team-server", "role": "approveAndSign", "caSecretName": "team-ca"},
        {"name": "kubernetes.io/kube-apiserver-client"},
    ])
    both = ["example.com/team-client", "example.com/team-server", "kubernetes.io/kube-apiserver-client"]
    assert signer_rules(objects) == {"approve": both, "sign": both}
    assert subresource_verbs(objects) == {"certificatesigningrequests/approval", "certificatesigningrequests/status"}
    volumes = deployment(objects)["spec"]["template"]["spec"]["volumes"]
    # team-ca once; the default CA for the kubernetes.io signer without one.
    assert sorted(v["secret"]["secretName"] for v in volumes if "secret" in v) == ["csr-warden-ca", "team-ca"]
    policy = validate_with_the_binary(tmp_path, objects)
    assert policy["signers"][0] == {"name": "example.com/team-client", "role": "approveAndSign",
                                    "allowClusterCA": True,
                                    "ca": {"cert": "/etc/csr-warden/cas/team-ca/tls.crt",
                                           "key": "/etc/csr-warden/cas/team-ca/tls.key"}}
    kubernetes_validate(tmp_path, objects)


POD_CERTIFICATES = [{"signerName": "example.com/workload-identity", "caSecretName": "workload-ca",
                     "trustDomain": "cluster.local",
                     "allow": [{"namespace": "payments", "serviceAccounts": ["api", "worker"]},
                               {"namespace": "apps"}],
                     "maxExpirationSeconds": 86400, "trustBundle": True}]


def test_pod_certificates_and_trust_bundles_get_their_rbac_ca_and_policy_only_when_set(tmp_path):
    objects = render_manifests.render({
        "signers": [{"name": "example.com/internal-client", "caSecretName": "internal-ca", "trustBundle": True},
                    {"name": "kubernetes.io/kubelet-serving", "role": "approve"}],
        "podCertificates": POD_CERTIFICATES,
    })
    role = named(objects, "ClusterRole", "csr-warden")
    rules = {(tuple(r["resources"]), tuple(r.get("resourceNames", [])), tuple(r["verbs"])) for r in role["rules"]}
    assert (("podcertificaterequests",), (), ("get", "list", "watch")) in rules
    assert (("podcertificaterequests/status",), (), ("update", "patch")) in rules
    assert (("signers",), ("example.com/workload-identity",), ("sign",)) in rules
    assert (("clustertrustbundles",), (), ("get", "list", "watch", "create", "update", "delete")) in rules
    # attest for exactly the published signers: the CSR signer that signs and the pod signer,
    # not the approve-only kubelet-serving.
    assert (("signers",), ("example.com/internal-client", "example.com/workload-identity"), ("attest",)) in rules
    volumes = deployment(objects)["spec"]["template"]["spec"]["volumes"]
    assert sorted(v["secret"]["secretName"] for v in volumes if "secret" in v) == ["internal-ca", "workload-ca"]
    policy = validate_with_the_binary(tmp_path, objects)
    assert policy["podCertificates"] == [{
        "signerName": "example.com/workload-identity", "trustDomain": "cluster.local",
        "ca": {"cert": "/etc/csr-warden/cas/workload-ca/tls.crt", "key": "/etc/csr-warden/cas/workload-ca/tls.key"},
        "allow": [{"namespace": "payments", "serviceAccounts": ["api", "worker"]}, {"namespace": "apps"}],
        "maxExpirationSeconds": 86400, "trustBundle": True}]
    assert policy["signers"][0]["trustBundle"] is True
    kubernetes_validate(tmp_path, objects)
    # The default install asks for none of it.
    default = named(manifest_objects(), "ClusterRole", "csr-warden")
    assert not [r for r in default["rules"]
                if {"podcertificaterequests", "clustertrustbundles"} & set(r["resources"])
                or {"attest"} & set(r["verbs"])]


def test_pod_certificates_without_signers_keep_signer_names_in_the_policy(tmp_path):
    objects = render_manifests.render({"podCertificates": POD_CERTIFICATES})
    policy = validate_with_the_binary(tmp_path, objects)
    assert policy["signerNames"] and policy["podCertificates"][0]["signerName"] == "example.com/workload-identity"
    for bad in ({"podCertificates": [{"signerName": "example.com/x", "caSecretName": "x", "allow": []}]},
                {"podCertificates": [{"signerName": "example.com/x", "allow": [{"namespace": "a"}]}]},
                {"podCertificates": [{"signerName": "example.com/x", "caSecretName": "x",
                                      "allow": [{"namespace": "a"}], "trustDomain": "spiffe://x"}]}):
        with pytest.raises(helm.HelmError):
            helm.Chart.load(str(CHART)).validate_schema(bad)


def test_an_approve_only_signer_with_a_ca_secret_is_refused_by_the_chart():
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError, match="never signs"):
        chart.render({"signers": [{"name": "kubernetes.io/kubelet-serving", "role": "approve",
                                   "caSecretName": "x"}]}, name="csr-warden", namespace="csr-warden",
                     is_install=True)
    for bad in ({"signers": [{"name": "kubernetes.io/kubelet-serving", "role": "approver"}]},
                {"signers": [{"role": "approve"}]}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


def test_every_manifest_passes_kubernetes_validate_strict():
    result = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION,
                             *map(str, MANIFESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_full_values_rendering_passes_kubernetes_validate_strict(tmp_path):
    out = tmp_path / "full.yaml"
    builtin = [o for o in render_manifests.render(copy.deepcopy(FULL_VALUES)) if o["kind"] != "ServiceMonitor"]
    out.write_text("---\n".join(yaml.safe_dump(o) for o in builtin))
    result = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_role_is_exactly_least_privilege():
    role = named(manifest_objects(), "ClusterRole", "csr-warden")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", [])), tuple(r["verbs"]))
             for r in role["rules"]}
    assert rules == {
        (("certificates.k8s.io",), ("certificatesigningrequests",), (), ("get", "list", "watch")),
        (("certificates.k8s.io",), ("certificatesigningrequests/approval",), (), ("update", "patch")),
        (("certificates.k8s.io",), ("certificatesigningrequests/status",), (), ("update", "patch")),
        (("certificates.k8s.io",), ("signers",), ("kubernetes.io/kube-apiserver-client",
                                                  "kubernetes.io/kube-apiserver-client-kubelet",
                                                  "kubernetes.io/kubelet-serving"), ("approve",)),
        (("certificates.k8s.io",), ("signers",), ("kubernetes.io/kube-apiserver-client",
                                                  "kubernetes.io/kube-apiserver-client-kubelet",
                                                  "kubernetes.io/kubelet-serving"), ("sign",)),
        (("events.k8s.io",), ("events",), (), ("create", "patch")),
        (("authorization.k8s.io",), ("subjectaccessreviews",), (), ("create",)),
        (("",), ("nodes",), (), ("get", "list", "watch")),
    }
    for r in role["rules"]:
        assert "*" not in r["verbs"] + r["resources"] + r["apiGroups"]
    lease_role = [r for r in by_kind(manifest_objects(), "Role") if "leader-election" in r["metadata"]["name"]][0]
    assert lease_role["metadata"]["namespace"] == "csr-warden"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["csr-warden"],
         "verbs": ["get", "patch"]},
    ]
    # The API server's addresses, which no kubelet serving certificate may name: only Service
    # default/kubernetes and the EndpointSlices of default.
    addresses_role = named(manifest_objects(), "Role", "csr-warden-apiserver-addresses")
    assert addresses_role["metadata"]["namespace"] == "default"
    assert addresses_role["rules"] == [
        {"apiGroups": [""], "resources": ["services"], "resourceNames": ["kubernetes"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    binding = named(manifest_objects(), "RoleBinding", "csr-warden-apiserver-addresses")
    assert binding["roleRef"]["name"] == "csr-warden-apiserver-addresses"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "csr-warden", "namespace": "csr-warden"}]
    events_role = named(manifest_objects(), "Role", "csr-warden-events-reader")
    assert events_role["metadata"]["namespace"] == "default"
    assert events_role["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}]
    events_binding = named(manifest_objects(), "RoleBinding", "csr-warden-events-reader")
    assert events_binding["subjects"] == [{"kind": "ServiceAccount", "name": "csr-warden", "namespace": "csr-warden"}]
    args = deployment(manifest_objects())["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--lease-name=csr-warden" in args, "the Role names the Lease the controller uses"
    assert not any("secrets" in r["resources"] for o in manifest_objects() if o["kind"] in ("ClusterRole", "Role")
                   for r in o["rules"])


def test_deployment_meets_the_restricted_pod_security_standard():
    objects = manifest_objects()
    namespace = by_kind(objects, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = deployment(objects)["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= {"configMap", "secret", "projected", "emptyDir", "downwardAPI"}
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc["readOnlyRootFilesystem"] is True
        assert sc.get("privileged") is not True
        assert all(m.get("readOnly") for m in container["volumeMounts"])
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_shipped_policy_is_valid_for_the_binary(tmp_path):
    policy = by_kind(manifest_objects(), "ConfigMap")[0]["data"]["policy.yaml"]
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    binary = ROOT / "target" / "release" / "csr-warden"
    result = subprocess.run([str(binary), "policy", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint():
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_the_binary_as_ci_does():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "cargo build --release --locked --bin csr-warden" in dockerfile
    assert "USER 65532:65532" in dockerfile
    ci = (ROOT / "scripts" / "test").read_text()
    assert "cargo build --release --locked --bin csr-warden" in ci


def test_default_install_is_highly_available_with_leader_election():
    objects = manifest_objects()
    deploy = deployment(objects)
    assert deploy["spec"]["replicas"] >= 2
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election" in args
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    pdb = by_kind(objects, "PodDisruptionBudget")[0]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    service = by_kind(objects, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_requester_role_lets_users_submit_and_follow_csrs_and_nothing_else():
    objects = manifest_objects()
    role = named(objects, "ClusterRole", "csr-warden-requester")
    assert role["rules"] == [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
                              "verbs": ["create", "get", "list", "watch"]}]
    # Bound to nobody by default: the operator decides who may ask.
    bindings = [b for b in by_kind(objects, "ClusterRoleBinding") if b["roleRef"]["name"] == "csr-warden-requester"]
    assert bindings == []


def test_requester_values_bind_the_role_to_users_and_groups():
    objects = render_manifests.render(copy.deepcopy(FULL_VALUES))
    binding = named(objects, "ClusterRoleBinding", "csr-warden-requester")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "csr-warden-requester"}
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "maria"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "developers"},
    ]
    only_groups = copy.deepcopy(FULL_VALUES)
    only_groups["requesters"] = {"users": [], "groups": ["ops"]}
    binding = named(render_manifests.render(only_groups), "ClusterRoleBinding", "csr-warden-requester")
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}]


PKCS11_VALUES = {
    "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so"},
    "signers": [{"name": "example.com/team", "caSecretName": "team-ca",
                 "pkcs11": {"uri": "pkcs11:token=csr-warden;object=team-ca", "pinSecretName": "team-pin"}}],
    "podCertificates": [{"signerName": "example.com/workload-identity", "caSecretName": "workload-ca",
                         "allow": [{"namespace": "apps"}],
                         "pkcs11": {"uri": "pkcs11:token=csr-warden;object=workload-ca",
                                    "pinSecretName": "team-pin", "module": "/opt/other/pkcs11.so"}}],
}


def test_a_signer_key_in_a_pkcs11_token_mounts_its_pin_and_names_its_module(tmp_path):
    objects = render_manifests.render(copy.deepcopy(PKCS11_VALUES))
    spec = deployment(objects)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    pins = [v for v in spec["volumes"] if v["name"].startswith("pkcs11-pin-")]
    # One PIN Secret shared by two signers is mounted once, only its `pin` key.
    assert pins == [{"name": "pkcs11-pin-0", "secret": {"secretName": "team-pin", "defaultMode": 0o440,
                                                        "items": [{"key": "pin", "path": "pin"}]}}]
    assert {"name": "pkcs11-pin-0", "mountPath": "/etc/csr-warden/pins/team-pin",
            "readOnly": True} in container["volumeMounts"]
    policy = yaml.safe_load(by_kind(objects, "ConfigMap")[0]["data"]["policy.yaml"])
    assert policy["signers"][0]["ca"] == {
        "cert": "/etc/csr-warden/cas/team-ca/tls.crt",
        "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "uri": "pkcs11:token=csr-warden;object=team-ca",
                   "pinFile": "/etc/csr-warden/pins/team-pin/pin"}}
    assert policy["podCertificates"][0]["ca"]["pkcs11"]["module"] == "/opt/other/pkcs11.so"
    kubernetes_validate(tmp_path, objects)


def test_a_pkcs11_signer_without_a_module_or_certificate_is_refused_by_the_chart():
    chart = helm.Chart.load(str(CHART))
    no_module = copy.deepcopy(PKCS11_VALUES)
    no_module["pkcs11"] = {}
    no_cert = {"signers": [{"name": "example.com/team",
                            "pkcs11": {"uri": "pkcs11:object=k", "pinSecretName": "p"}}],
               "pkcs11": {"module": "/m.so"}}
    for bad, says in ((no_module, "names no module"), (no_cert, "no caSecretName")):
        with pytest.raises(helm.HelmError, match=says):
            chart.render(bad, name="csr-warden", namespace="csr-warden", is_install=True)
    for bad in ({"signers": [{"name": "example.com/t", "caSecretName": "c",
                              "pkcs11": {"uri": "token=x", "pinSecretName": "p"}}]},
                {"pkcs11": {"module": "relative.so"}}):
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)


def test_the_pkcs11_example_renders_and_validates(tmp_path):
    values = yaml.safe_load((ROOT / "examples" / "pkcs11" / "values.yaml").read_text())
    objects = render_manifests.render(values)
    policy = yaml.safe_load(by_kind(objects, "ConfigMap")[0]["data"]["policy.yaml"])
    assert policy["signers"][0]["ca"]["pkcs11"]["pinFile"].startswith("/etc/csr-warden/pins/")
    kubernetes_validate(tmp_path, objects)
    extra = [doc for doc in yaml.safe_load_all((ROOT / "examples" / "pkcs11" / "secrets.yaml").read_text()) if doc]
    kubernetes_validate(tmp_path, extra)
