{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "csr-warden.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name. */}}
{{- define "csr-warden.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "csr-warden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "csr-warden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: csr-warden
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the pod. */}}
{{- define "csr-warden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csr-warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Extra annotations, as a metadata block when any are set. */}}
{{- define "csr-warden.annotations" -}}
{{- with .Values.extraAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The signers as csr-warden runs them, as a JSON list of {name, role, caSecretName,
allowClusterCA}: .Values.signers when set, else every policy.signerNames entry approveAndSign
with the default CA (caSecretName). */}}
{{- define "csr-warden.signers" -}}
{{- $out := list -}}
{{- if .Values.signers -}}
{{- range .Values.signers -}}
{{- $role := .role | default "approveAndSign" -}}
{{- if and (eq $role "approve") .caSecretName -}}
{{- fail (printf "signers: %s has role approve, which never signs, but sets caSecretName; remove it or use approveAndSign" .name) -}}
{{- end -}}
{{- if and .pkcs11 (not .caSecretName) -}}
{{- fail (printf "signers: %s sets pkcs11 but no caSecretName; the CA certificate (tls.crt) comes from that Secret" .name) -}}
{{- end -}}
{{- $out = append $out (dict "name" .name "role" $role "caSecretName" (.caSecretName | default "") "allowClusterCA" (.allowClusterCA | default false) "trustBundle" (.trustBundle | default false) "pkcs11" (.pkcs11 | default dict)) -}}
{{- end -}}
{{- else -}}
{{- range .Values.policy.signerNames -}}
{{- $out = append $out (dict "name" . "role" "approveAndSign" "caSecretName" "" "allowClusterCA" false "trustBundle" false) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Signers csr-warden approves or denies for (JSON list of names). */}}
{{- define "csr-warden.deciders" -}}
{{- $out := list -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- if ne .role "sign" }}{{ $out = append $out .name }}{{ end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Signers csr-warden issues certificates for (JSON list of names). */}}
{{- define "csr-warden.signing" -}}
{{- $out := list -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- if ne .role "approve" }}{{ $out = append $out .name }}{{ end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* "true" when some signing signer has no CA Secret of its own and uses caSecretName. */}}
{{- define "csr-warden.needsDefaultCA" -}}
{{- $needs := false -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- if and (ne .role "approve") (not .caSecretName) }}{{ $needs = true }}{{ end -}}
{{- end -}}
{{- if $needs }}true{{ end -}}
{{- end -}}

{{/* The CA Secrets of signing signers that have their own, and of every pod-certificate signer
(JSON list, each once). */}}
{{- define "csr-warden.signerCASecrets" -}}
{{- $out := list -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- if and (ne .role "approve") .caSecretName }}{{ $out = append $out .caSecretName }}{{ end -}}
{{- end -}}
{{- range .Values.podCertificates }}{{ $out = append $out .caSecretName }}{{ end -}}
{{- toJson ($out | uniq) -}}
{{- end -}}

{{/* The policy file: .Values.policy, with signers (and their mounted CA paths) in place of
signerNames when .Values.signers is set. */}}
{{- define "csr-warden.policy" -}}
{{- if .Values.signers -}}
{{- $signers := list -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- $entry := dict "name" .name "role" .role -}}
{{- if and .caSecretName (ne .role "approve") -}}
{{- $_ := set $entry "ca" (include "csr-warden.ca" (dict "secret" .caSecretName "pkcs11" .pkcs11 "root" $) | fromYaml) -}}
{{- end -}}
{{- if .allowClusterCA }}{{ $_ := set $entry "allowClusterCA" true }}{{ end -}}
{{- if and .trustBundle (ne .role "approve") }}{{ $_ := set $entry "trustBundle" true }}{{ end -}}
{{- $signers = append $signers $entry -}}
{{- end -}}
{{- toYaml (merge (dict "signers" $signers) (include "csr-warden.podCertificatesPolicy" . | fromYaml) (omit .Values.policy "signerNames")) -}}
{{- else -}}
{{- toYaml (merge (include "csr-warden.podCertificatesPolicy" . | fromYaml) .Values.policy) -}}
{{- end -}}
{{- end -}}

{{/* The policy's podCertificates (as YAML under that key, or {} when none), with each signer's
CA at its mounted Secret's path. */}}
{{- define "csr-warden.podCertificatesPolicy" -}}
{{- $out := list -}}
{{- range .Values.podCertificates -}}
{{- $entry := dict "signerName" .signerName "trustDomain" (.trustDomain | default "cluster.local") "allow" .allow "ca" (include "csr-warden.ca" (dict "secret" .caSecretName "pkcs11" .pkcs11 "root" $) | fromYaml) -}}
{{- if .maxExpirationSeconds }}{{ $_ := set $entry "maxExpirationSeconds" .maxExpirationSeconds }}{{ end -}}
{{- if .trustBundle }}{{ $_ := set $entry "trustBundle" true }}{{ end -}}
{{- $out = append $out $entry -}}
{{- end -}}
{{- if $out }}{{ toYaml (dict "podCertificates" $out) }}{{ else }}{}{{ end -}}
{{- end -}}

{{/* The pod-certificate signers' names (JSON list). */}}
{{- define "csr-warden.podSigners" -}}
{{- $out := list -}}
{{- range .Values.podCertificates }}{{ $out = append $out .signerName }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The signers whose CA is published as a ClusterTrustBundle (JSON list). */}}
{{- define "csr-warden.trustBundleSigners" -}}
{{- $out := list -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- if and .trustBundle (ne .role "approve") }}{{ $out = append $out .name }}{{ end -}}
{{- end -}}
{{- range .Values.podCertificates -}}
{{- if .trustBundle }}{{ $out = append $out .signerName }}{{ end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A signer's `ca` in the policy: tls.crt and tls.key of its mounted Secret, or tls.crt and a
key in a PKCS#11 token whose PIN Secret is mounted. Takes {secret, pkcs11, root}. */}}
{{- define "csr-warden.ca" -}}
{{- $cert := printf "/etc/csr-warden/cas/%s/tls.crt" .secret -}}
{{- if .pkcs11 -}}
{{- $module := .pkcs11.module | default .root.Values.pkcs11.module -}}
{{- if not $module -}}
{{- fail (printf "pkcs11 of the signer with caSecretName %s names no module: set its module or pkcs11.module" .secret) -}}
{{- end -}}
{{- toYaml (dict "cert" $cert "pkcs11" (dict "module" $module "uri" .pkcs11.uri "pinFile" (printf "/etc/csr-warden/pins/%s/pin" .pkcs11.pinSecretName))) -}}
{{- else -}}
{{- toYaml (dict "cert" $cert "key" (printf "/etc/csr-warden/cas/%s/tls.key" .secret)) -}}
{{- end -}}
{{- end -}}

{{/* The PIN Secrets of the signers whose key is in a PKCS#11 token (JSON list, each once). */}}
{{- define "csr-warden.pinSecrets" -}}
{{- $out := list -}}
{{- range (include "csr-warden.signers" . | fromJsonArray) -}}
{{- if and (ne .role "approve") .pkcs11 }}{{ $out = append $out .pkcs11.pinSecretName }}{{ end -}}
{{- end -}}
{{- range .Values.podCertificates -}}
{{- if .pkcs11 }}{{ $out = append $out .pkcs11.pinSecretName }}{{ end -}}
{{- end -}}
{{- toJson ($out | uniq) -}}
{{- end -}}
