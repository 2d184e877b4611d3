{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "spindle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, short enough for "<fullname>-storage-headless" and for StatefulSet
pod names with their controller-revision-hash label. */}}
{{- define "spindle.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spindle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spindle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spindle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "spindle.configMapName" -}}
{{- printf "%s-config" (include "spindle.fullname" .) }}
{{- end }}

{{- define "spindle.storageName" -}}
{{- printf "%s-storage" (include "spindle.fullname" .) }}
{{- end }}

{{- define "spindle.generatorHeadlessName" -}}
{{- printf "%s-generator-headless" (include "spindle.fullname" .) }}
{{- end }}

{{/* The metrics generators' internal addresses (pods <release>-generator-0, -1, ...), which
ingesters send spans to. */}}
{{- define "spindle.generators" -}}
{{- $out := list }}
{{- range $i := until (int .Values.generator.replicas) }}
{{- $out = append $out (printf "%s-generator-%d.%s.%s.svc.%s:%d" (include "spindle.fullname" $) $i (include "spindle.generatorHeadlessName" $) $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{- define "spindle.storageHeadlessName" -}}
{{- printf "%s-storage-headless" (include "spindle.fullname" .) }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------
Called with (dict "ctx" $ "component" "storage"). */}}

{{- define "spindle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spindle.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spindle.labels" -}}
helm.sh/chart: {{ include "spindle.chart" .ctx }}
{{ include "spindle.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: spindle
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* Labels of a release's objects that are not one component's (ConfigMap, ServiceAccount). */}}
{{- define "spindle.commonLabels" -}}
helm.sh/chart: {{ include "spindle.chart" . }}
app.kubernetes.io/name: {{ include "spindle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: spindle
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Pod labels: selector labels, workload identity, podLabels. */}}
{{- define "spindle.podLabels" -}}
{{ include "spindle.selectorLabels" . }}
{{- if .ctx.Values.objectStorage.azure.workloadIdentity.clientId }}
azure.workload.identity/use: "true"
{{- end }}
{{- with .ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations: a checksum of the configuration that needs a restart (retention and
tenants are reloaded by the running process), podAnnotations. */}}
{{- define "spindle.podAnnotations" -}}
checksum/config: {{ omit (include "spindle.configMap" .ctx | fromYaml) "retention" "tenants" | toYaml | sha256sum }}
{{- with .ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Configuration -----------------------------------------------------------------------*/}}

{{- define "spindle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Storage nodes' internal addresses: the first cluster.bootstrapExpect pods of the storage
StatefulSet (numbered from 1), by their stable DNS names under the headless Service. */}}
{{- define "spindle.seeds" -}}
{{- $seeds := list }}
{{- range $i := until (int .Values.cluster.bootstrapExpect) }}
{{- $seeds = append $seeds (printf "%s-%d.%s.%s.svc.%s:%d" (include "spindle.storageName" $) (add1 $i) (include "spindle.storageHeadlessName" $) $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $seeds }}
{{- end }}

{{/* The keys of Spindle's config file the chart sets itself. */}}
{{- define "spindle.managedKeys" -}}
data_dir storage_url storage_endpoint cache_dir http_addr otlp_grpc_addr otlp_http_addr zipkin_addr grpc_addr advertise_addr node_id seeds bootstrap_expect shards replication_factor shards_per_tenant generators api_keys_file trust_tenant_header tls_cert_file tls_key_file tls_self_signed internal_tls_ca_file internal_tls_cert_file internal_tls_key_file internal_tls_server_name
{{- end }}

{{/* spindle.yaml: the chart's keys and .Values.config. */}}
{{- define "spindle.configMap" -}}
{{- $c := dict "data_dir" "/var/lib/spindle" }}
{{- $_ := set $c "http_addr" (printf "0.0.0.0:%d" (int .Values.ports.http)) }}
{{- $_ := set $c "otlp_grpc_addr" (printf "0.0.0.0:%d" (int .Values.ports.otlpGrpc)) }}
{{- $_ := set $c "otlp_http_addr" (printf "0.0.0.0:%d" (int .Values.ports.otlpHttp)) }}
{{- $_ := set $c "zipkin_addr" (ternary (printf "0.0.0.0:%d" (int .Values.ports.zipkin)) "" (gt (int .Values.ports.zipkin) 0)) }}
{{- with .Values.objectStorage.url }}
{{- $_ := set $c "storage_url" . }}
{{- end }}
{{- if .Values.auth.apiKeysSecret }}
{{- $_ := set $c "api_keys_file" "/etc/spindle-keys/keys.yaml" }}
{{- else }}
{{- $_ := set $c "trust_tenant_header" (.Values.auth.trustTenantHeader | default false) }}
{{- end }}
{{- if .Values.tls.secretName }}
{{- $_ := set $c "tls_cert_file" "/etc/spindle-tls/tls.crt" }}
{{- $_ := set $c "tls_key_file" "/etc/spindle-tls/tls.key" }}
{{- end }}
{{- with .Values.objectStorage.endpoint }}
{{- $_ := set $c "storage_endpoint" . }}
{{- end }}
{{- if and (eq .Values.mode "distributed") .Values.cluster.internalTls.secretName }}
{{- $_ := set $c "internal_tls_ca_file" "/etc/spindle-internal-tls/ca.crt" }}
{{- $_ := set $c "internal_tls_cert_file" "/etc/spindle-internal-tls/tls.crt" }}
{{- $_ := set $c "internal_tls_key_file" "/etc/spindle-internal-tls/tls.key" }}
{{- with .Values.cluster.internalTls.serverName }}
{{- $_ := set $c "internal_tls_server_name" . }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "distributed" }}
{{- $_ := set $c "grpc_addr" (printf "0.0.0.0:%d" (int .Values.ports.grpc)) }}
{{- $_ := set $c "seeds" (splitList "," (include "spindle.seeds" .)) }}
{{- $_ := set $c "bootstrap_expect" (int .Values.cluster.bootstrapExpect) }}
{{- $_ := set $c "shards" (int .Values.cluster.shards) }}
{{- $_ := set $c "replication_factor" (int .Values.cluster.replicationFactor) }}
{{- $_ := set $c "shards_per_tenant" (int .Values.cluster.shardsPerTenant) }}
{{- if and .Values.generator.enabled (gt (int .Values.generator.replicas) 0) }}
{{- $_ := set $c "generators" (splitList "," (include "spindle.generators" .)) }}
{{- end }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy (default (dict) .Values.config)) $c) }}
{{- end }}

{{/* Checks of the values; fails the render with a message. */}}
{{- define "spindle.validate" -}}
{{- if not (has .Values.mode (list "single" "distributed")) }}
{{- fail (printf "mode must be single or distributed, not %q" .Values.mode) }}
{{- end }}
{{- range $key := splitList " " (include "spindle.managedKeys" .) }}
{{- if hasKey (default (dict) $.Values.config) $key }}
{{- fail (printf "config.%s is set by the chart; use the chart's values (objectStorage, ports, cluster, *.cache, *.extraArgs) instead" $key) }}
{{- end }}
{{- end }}
{{- $url := .Values.objectStorage.url }}
{{- if and $url (not (regexMatch "^(s3|az|gs|file)://" $url)) }}
{{- fail (printf "objectStorage.url must start with s3://, az://, gs:// or file://, not %q" $url) }}
{{- end }}
{{- if eq .Values.mode "distributed" }}
{{- if or (not $url) (hasPrefix "file://" $url) }}
{{- fail "mode distributed needs objectStorage.url: s3://bucket/prefix, az://container/prefix or gs://bucket/prefix (storage nodes, queriers and compactors share it)" }}
{{- end }}
{{- if lt (int .Values.storage.replicas) (int .Values.cluster.bootstrapExpect) }}
{{- fail "storage.replicas must be at least cluster.bootstrapExpect (the seeds are the first bootstrapExpect storage pods)" }}
{{- end }}
{{- if gt (int .Values.cluster.replicationFactor) (int .Values.cluster.bootstrapExpect) }}
{{- fail "cluster.replicationFactor cannot be larger than cluster.bootstrapExpect" }}
{{- end }}
{{- if lt (int .Values.cluster.bootstrapExpect) 1 }}
{{- fail "cluster.bootstrapExpect must be at least 1" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod parts --------------------------------------------------------------------------- */}}

{{/* Object store credentials, for the roles that read or write blocks. */}}
{{- define "spindle.objectStoreEnv" -}}
{{- $os := .Values.objectStorage }}
{{- with $os.aws.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $os.aws.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $os.aws.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $os.aws.secretAccessKeyKey }}
{{- end }}
{{- if $os.azure.accountName }}
- name: AZURE_STORAGE_ACCOUNT_NAME
  value: {{ $os.azure.accountName | quote }}
{{- else if $os.azure.existingSecret }}
- name: AZURE_STORAGE_ACCOUNT_NAME
  valueFrom:
    secretKeyRef:
      name: {{ $os.azure.existingSecret }}
      key: {{ $os.azure.accountNameKey }}
{{- end }}
{{- with $os.azure.existingSecret }}
- name: AZURE_STORAGE_ACCOUNT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $os.azure.accountKeyKey }}
{{- end }}
{{- end }}

{{- define "spindle.clusterSecretName" -}}
{{- default (printf "%s-cluster-secret" (include "spindle.fullname" .)) .Values.cluster.secretName }}
{{- end }}

{{/* Environment of a container: (dict "ctx" $ "store" true) */}}
{{- define "spindle.env" -}}
{{- if eq .ctx.Values.mode "distributed" }}
- name: SPINDLE_CLUSTER_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "spindle.clusterSecretName" .ctx }}
      key: cluster-secret
{{- end }}
{{- if .store }}
{{- include "spindle.objectStoreEnv" .ctx }}
{{- end }}
{{- with .ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spindle.probes" -}}
{{- $p := .Values.probes -}}
startupProbe:
  httpGet:
    path: /live
    port: http
    {{- if .Values.tls.secretName }}
    scheme: HTTPS
    {{- end }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /live
    port: http
    {{- if .Values.tls.secretName }}
    scheme: HTTPS
    {{- end }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /ready
    port: http
    {{- if .Values.tls.secretName }}
    scheme: HTTPS
    {{- end }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end }}

{{/* Pod-level settings every workload shares: (dict "ctx" $ "v" .Values.<role>) */}}
{{- define "spindle.podCommon" -}}
serviceAccountName: {{ include "spindle.serviceAccountName" .ctx }}
automountServiceAccountToken: {{ .ctx.Values.serviceAccount.automountServiceAccountToken }}
# No SPINDLE_*-like variables from Services: every SPINDLE_* variable is an option.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ .v.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The container's image, command, security context and config mount. */}}
{{- define "spindle.containerCommon" -}}
image: {{ include "spindle.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
command:
  {{- toYaml .ctx.Values.image.command | nindent 2 }}
securityContext:
  {{- toYaml .ctx.Values.containerSecurityContext | nindent 2 }}
{{- with .ctx.Values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Volume mounts every container has (first entries of volumeMounts). */}}
{{- define "spindle.commonMounts" -}}
- name: config
  mountPath: /etc/spindle
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.auth.apiKeysSecret }}
- name: api-keys
  mountPath: /etc/spindle-keys
  readOnly: true
{{- end }}
{{- if .Values.tls.secretName }}
- name: tls
  mountPath: /etc/spindle-tls
  readOnly: true
{{- end }}
{{- if and (eq .Values.mode "distributed") .Values.cluster.internalTls.secretName }}
- name: internal-tls
  mountPath: /etc/spindle-internal-tls
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spindle.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "spindle.configMapName" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with .Values.auth.apiKeysSecret }}
- name: api-keys
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- if and (eq .Values.mode "distributed") .Values.cluster.internalTls.secretName }}
- name: internal-tls
  secret:
    secretName: {{ .Values.cluster.internalTls.secretName }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Hostname anti-affinity: (dict "ctx" $ "component" "storage" "mode" "hard") */}}
{{- define "spindle.antiAffinity" -}}
{{- if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "spindle.selectorLabels" . | nindent 10 }}
{{- else if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "spindle.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}
