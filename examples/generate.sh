#!/usr/bin/env bash
# Regenerates the example CSR objects with openssl. The private keys are thrown away: these
# requests are for `csr-warden check` and for trying csr-warden out, not for real use.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# csr_object NAME SIGNER USAGES USERNAME GROUPS SUBJECT [SAN]
csr_object() {
  local name=$1 signer=$2 usages=$3 username=$4 groups=$5 subject=$6 san=${7:-}
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$name.key" 2>/dev/null
  if [ -n "$san" ]; then
    openssl req -new -key "$work/$name.key" -subj "$subject" -addext "subjectAltName=$san" -out "$work/$name.csr"
  else
    openssl req -new -key "$work/$name.key" -subj "$subject" -out "$work/$name.csr"
  fi
  cat > "$name.yaml" <<YAML
# Made by examples/generate.sh with openssl (subject $subject).
# spec.username and spec.groups are set by the API server from whoever creates the object;
# they are filled in here so that \`csr-warden check\` can decide the request offline.
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: $name
spec:
  request: $(base64 -w0 < "$work/$name.csr")
  signerName: $signer
  expirationSeconds: 86400
  usages: [$usages]
  username: $username
  groups: [$groups]
YAML
}

csr_object jane kubernetes.io/kube-apiserver-client "client auth" \
  jane "system:authenticated" "/CN=jane/O=developers"
csr_object agent-smith kubernetes.io/kube-apiserver-client "client auth" \
  agent-smith "system:authenticated" "/CN=agent-smith/O=system:masters"
csr_object kubelet-client kubernetes.io/kube-apiserver-client-kubelet "digital signature, client auth" \
  "system:bootstrap:abcdef" "system:bootstrappers, system:authenticated" "/CN=system:node:worker-1/O=system:nodes"
csr_object kubelet-serving kubernetes.io/kubelet-serving "digital signature, server auth" \
  "system:node:worker-1" "system:nodes, system:authenticated" "/CN=system:node:worker-1/O=system:nodes" \
  "DNS:worker-1,IP:10.0.0.11"

# pcr_object NAMESPACE NAME SERVICE_ACCOUNT: the PodCertificateRequest a kubelet makes for a pod,
# its stubPKCS10Request an empty-subject P-256 request (the UIDs are made up).
pcr_object() {
  local namespace=$1 name=$2 account=$3
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj / -outform DER \
    -keyout "$work/$name.key" -out "$work/$name.der" 2>/dev/null
  cat > "pod-certificates/pcr-$namespace-$name.yaml" <<YAML
# Made by examples/generate.sh with openssl: what a kubelet creates for pod $namespace/$name
# (service account $account) mounting a podCertificate volume of example.com/workload-identity.
# \`csr-warden check --pcr-object\` decides it offline.
apiVersion: certificates.k8s.io/v1beta1
kind: PodCertificateRequest
metadata:
  name: $name
  namespace: $namespace
spec:
  signerName: example.com/workload-identity
  podName: $name
  podUID: 5f0c7a52-3c1e-4d2b-9a43-1b1f0a6c0001
  serviceAccountName: $account
  serviceAccountUID: 5f0c7a52-3c1e-4d2b-9a43-1b1f0a6c0002
  nodeName: worker-1
  nodeUID: 5f0c7a52-3c1e-4d2b-9a43-1b1f0a6c0003
  maxExpirationSeconds: 86400
  stubPKCS10Request: $(base64 -w0 < "$work/$name.der")
YAML
}

pcr_object payments api-7d9f-0 api
pcr_object payments intruder-0 intruder
