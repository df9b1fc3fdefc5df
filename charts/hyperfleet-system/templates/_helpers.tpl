{{/* Common labels; `component` is api, sentinel, adapter, postgresql or rabbitmq. */}}
{{- define "hf.labels" -}}
app.kubernetes.io/name: hyperfleet-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: hyperfleet
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end }}

{{- define "hf.selector" -}}
app.kubernetes.io/name: hyperfleet-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
{{- end }}

{{/* registry/repository:tag, or registry/repository@digest when a digest pins it. */}}
{{- define "hf.image" -}}
{{- if not .registry }}{{ fail (printf "image.registry of %s is empty: set the registry the images were pushed to" .repository) }}{{ end }}
{{- if .digest -}}
{{ printf "%s/%s@%s" .registry .repository .digest }}
{{- else -}}
{{ printf "%s/%s:%s" .registry .repository .tag }}
{{- end }}
{{- end }}

{{/* Pod-level security for the restricted Pod Security Standard. */}}
{{- define "hf.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "hf.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Ports every service listens on: health 8080 and metrics 9090. */}}
{{- define "hf.opsPorts" -}}
- name: health
  containerPort: 8080
  protocol: TCP
- name: metrics
  containerPort: 9090
  protocol: TCP
{{- end }}

{{- define "hf.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: health}
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* Scheduling and pod extras of a component's values. */}}
{{- define "hf.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The pod template's metadata: labels (+ podLabels and the optional podOnly labels, which win) and
annotations (config checksum, the mesh's, then podAnnotations, which win). Input: root, component, v
(the component's values), checksum, bypass (ports that skip the sidecar), podOnly (labels of the pods
only, never of a selector: the Deployments' selectors are immutable).
*/}}
{{- define "hf.podMetadata" -}}
{{- $ann := dict "checksum/config" .checksum -}}
{{- $mesh := .root.Values.mesh -}}
{{- $user := .v.podAnnotations | default dict -}}
{{- if $mesh.enabled -}}
{{- $bypass := .bypass -}}
{{- with index $user "traffic.sidecar.istio.io/excludeOutboundPorts" }}{{ $bypass = concat $bypass (splitList "," (toString .)) | uniq }}{{ end -}}
{{- $_ := set $ann "traffic.sidecar.istio.io/excludeOutboundPorts" (join "," $bypass) -}}
{{- if $mesh.istio.holdApplicationUntilProxyStarts -}}
{{- $_ := set $ann "proxy.istio.io/config" "{\"holdApplicationUntilProxyStarts\": true}" -}}
{{- end -}}
{{- end -}}
{{- $ann = merge (omit (deepCopy $user) "traffic.sidecar.istio.io/excludeOutboundPorts") $ann -}}
labels:
  {{- include "hf.labels" . | nindent 2 }}
  {{- if $mesh.enabled }}
  sidecar.istio.io/inject: "true"
  {{- end }}
  {{- include "hf.stringMap" (merge (deepCopy (.podOnly | default dict)) (.v.podLabels | default dict)) | nindent 2 }}
annotations:
  {{- include "hf.stringMap" $ann | nindent 2 }}
{{- end }}

{{/* A map of labels or annotations with every value a string (`--set team=42` gives a number). */}}
{{- define "hf.stringMap" -}}
{{- range $k, $v := . }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* Metadata of the dev PostgreSQL/RabbitMQ pods: never injected (their clients bypass the sidecar). */}}
{{- define "hf.devPodMetadata" -}}
{{- $ann := dict -}}
{{- if .root.Values.mesh.enabled }}{{ $_ := set $ann "sidecar.istio.io/inject" "false" }}{{ end -}}
{{- $ann = merge (deepCopy (.v.podAnnotations | default dict)) $ann -}}
labels:
  {{- include "hf.labels" . | nindent 2 }}
  {{- include "hf.stringMap" .v.podLabels | nindent 2 }}
{{- with $ann }}
annotations:
  {{- include "hf.stringMap" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A ServiceAccount/Service annotations block: AWS role (IRSA) and the component's own. */}}
{{- define "hf.saAnnotations" -}}
{{- $ann := deepCopy (.serviceAccount.annotations | default dict) -}}
{{- if and .aws.podIdentity.enabled .aws.podIdentity.roleArn }}
{{- $_ := set $ann "eks.amazonaws.com/role-arn" .aws.podIdentity.roleArn }}
{{- end }}
{{- with $ann }}
annotations:
  {{- include "hf.stringMap" . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "hf.serviceAnnotations" -}}
{{- with .service.annotations }}
annotations:
  {{- include "hf.stringMap" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Whether any component uses the development RabbitMQ. */}}
{{- define "hf.devRabbitmq" -}}
{{- if or .Values.hyperfleetSentinel.broker.rabbitmq.enabled .Values.hyperfleetAdapter.broker.rabbitmq.enabled }}true{{ end }}
{{- end }}

{{/*
A development password: the value if set, else the one in the existing Secret (kept across upgrades),
else a new random one. ArgoCD renders without cluster access: set the value, or keep the Secret with
the Application's ignoreDifferences (charts/argocd/application.yaml).
*/}}
{{- define "hf.password" -}}
{{- if .value -}}
{{ .value }}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .namespace .secret -}}
{{- if and $existing $existing.data (index $existing.data .key) -}}
{{ index $existing.data .key | b64dec }}
{{- else -}}
{{ randAlphaNum 32 }}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Mode checks that span several values, each failing with one sentence. Rendered once (namespace.yaml).
*/}}
{{- define "hf.validate" -}}
{{- $api := .Values.hyperfleetApi -}}
{{- $db := $api.database -}}
{{- if and (not $db.postgresql.enabled) (not $db.external.enabled) }}
{{- fail "hyperfleetApi.database: enable postgresql (development) or external (RDS or any PostgreSQL); both are off, so the API has no database" }}
{{- end }}
{{- if and $db.postgresql.enabled $db.external.enabled }}
{{- fail "hyperfleetApi.database: postgresql and external are both enabled; enable exactly one" }}
{{- end }}
{{- $l := $api.limits }}
{{- if or (ge (int $l.maxSpecBytes) (int $l.maxBodyBytes)) (ge (int $l.maxStatusBytes) (int $l.maxBodyBytes)) }}
{{- fail (printf "hyperfleetApi.limits: maxSpecBytes (%d) and maxStatusBytes (%d) must be below hyperfleetApi.limits.maxBodyBytes (%d): a body holds them" (int $l.maxSpecBytes) (int $l.maxStatusBytes) (int $l.maxBodyBytes)) }}
{{- end }}
{{- if and $db.external.caBundle.configMap $db.external.caBundle.secret }}
{{- fail "hyperfleetApi.database.external.caBundle: set configMap or secret, not both" }}
{{- end }}
{{- if and (or $db.external.caBundle.configMap $db.external.caBundle.secret) $db.external.rootCertFile }}
{{- fail "hyperfleetApi.database.external: set caBundle or rootCertFile, not both" }}
{{- end }}
{{- if and $db.external.enabled $db.external.usePodIdentity $db.external.rootCertFile (not $db.external.rootCertSecretName) }}
{{- fail "hyperfleetApi.database.external.rootCertSecretName: with usePodIdentity, rootCertFile is mounted from this Secrets Manager secret; set it (or use caBundle)" }}
{{- end }}
{{- if and $db.external.enabled (not $db.external.usePodIdentity) $db.external.credentials.host $db.external.rootCertFile }}
{{- fail "hyperfleetApi.database.external: the Secret made from credentials holds no CA file; give the CA with caBundle instead of rootCertFile" }}
{{- end }}
{{- if and $db.external.enabled (not $db.external.usePodIdentity) $db.external.credentials.host $db.external.existingSecret }}
{{- fail "hyperfleetApi.database.external: set credentials.host (the chart creates the Secret) or existingSecret, not both" }}
{{- end }}
{{- $pdb := $api.podDisruptionBudget -}}
{{- if and $pdb.enabled (gt (int $api.replicaCount) 1) (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) (int $api.replicaCount)) }}
{{- fail (printf "hyperfleetApi.podDisruptionBudget.minAvailable (%d) must be lower than replicaCount (%d), or no node could ever be drained" (int $pdb.minAvailable) (int $api.replicaCount)) }}
{{- end }}
{{- $s := .Values.hyperfleetSentinel.broker -}}
{{- $a := .Values.hyperfleetAdapter.broker -}}
{{- range $name, $b := dict "hyperfleetSentinel" $s "hyperfleetAdapter" $a }}
{{- if and (not $b.rabbitmq.enabled) (not $b.external.enabled) }}
{{- fail (printf "%s.broker: enable rabbitmq (development) or external (Amazon MQ or any AMQPS broker); both are off" $name) }}
{{- end }}
{{- if and $b.rabbitmq.enabled $b.external.enabled }}
{{- fail (printf "%s.broker: rabbitmq and external are both enabled; enable exactly one" $name) }}
{{- end }}
{{- if and $b.external.enabled (not $b.external.useTLS) }}
{{- fail (printf "%s.broker.external.useTLS: false is not supported: the external broker is reached over AMQPS with its certificate verified" $name) }}
{{- end }}
{{- if and $b.external.caBundle.configMap $b.external.caBundle.secret }}
{{- fail (printf "%s.broker.external.caBundle: set configMap or secret, not both" $name) }}
{{- end }}
{{- if and $b.external.enabled (not $b.external.usePodIdentity) $b.external.url $b.external.existingSecret }}
{{- fail (printf "%s.broker.external: set url (the chart creates the Secret) or existingSecret, not both" $name) }}
{{- end }}
{{- if and $b.external.url (not (hasPrefix "amqps://" $b.external.url)) }}
{{- fail (printf "%s.broker.external.url must start with amqps:// (the external broker is reached over TLS)" $name) }}
{{- end }}
{{- end }}
{{- if ne $s.rabbitmq.enabled $a.rabbitmq.enabled }}
{{- fail "hyperfleetSentinel and hyperfleetAdapter use different brokers (one the development RabbitMQ, one external): events would never arrive; set broker.rabbitmq.enabled alike" }}
{{- end }}
{{- /* The adapters (hyperfleetAdapter and hyperfleetAdapters): names, tasks, RBAC, exchanges. */}}
{{- $_ := include "hf.workloads" (dict "root" . "out" dict) }}
{{- if and .Values.mesh.enabled .Values.createNamespace (ne .Values.podSecurityLevel "privileged") (not .Values.mesh.istio.cni) }}
{{- fail (printf "mesh.enabled with createNamespace: istio-init needs NET_ADMIN and NET_RAW, which Pod Security %q forbids; run Istio with istio-cni and set mesh.istio.cni=true, or set podSecurityLevel=privileged" .Values.podSecurityLevel) }}
{{- end }}
{{- range $name := list "database" "broker" "kubernetesApi" "jwks" }}
{{- $ports := index $.Values.networkPolicy.egress $name }}
{{- if not $ports }}
{{- fail (printf "networkPolicy.egress.%s is empty: an egress rule without ports allows every port; list the ports" $name) }}
{{- end }}
{{- end }}
{{- if and $api.virtualService.enabled (not $api.auth.enableJwt) (not $api.virtualService.allowUnauthenticated) }}
{{- fail "hyperfleetApi.virtualService publishes the API on a gateway while hyperfleetApi.auth.enableJwt is false: anyone could write; turn JWT on or set virtualService.allowUnauthenticated=true" }}
{{- end }}
{{- if and $db.external.enabled $db.external.usePodIdentity (or $db.external.credentials.host $db.external.existingSecret) }}
{{- fail "hyperfleetApi.database.external: credentials and existingSecret are used only with usePodIdentity=false (with Pod Identity the SecretProviderClass mounts secretName)" }}
{{- end }}
{{- range $name, $b := dict "hyperfleetSentinel" $s "hyperfleetAdapter" $a }}
{{- if and $b.external.enabled $b.external.usePodIdentity (or $b.external.url $b.external.existingSecret) }}
{{- fail (printf "%s.broker.external: url and existingSecret are used only with usePodIdentity=false (with Pod Identity the SecretProviderClass mounts secretName)" $name) }}
{{- end }}
{{- end }}
{{- with $api.auth }}
{{- if and .jwksUrl (or (not .issuer) (not .audience)) }}
{{- fail "hyperfleetApi.auth.jwksUrl (an external IdP) needs issuer and audience too: without them any token its keys sign, for any service, would be accepted" }}
{{- end }}
{{- if and .enableJwt (not .kubernetes.enabled) }}
{{- fail "hyperfleetApi.auth.kubernetes.enabled=false with JWT on: the sentinel and the adapter authenticate with ServiceAccount tokens of the cluster's issuer and would be refused" }}
{{- end }}
{{- end }}
{{- if and .Values.mesh.enabled (ne .Values.mesh.type "istio") }}
{{- fail (printf "mesh.type %q is not supported (istio)" .Values.mesh.type) }}
{{- end }}
{{- with $api.virtualService }}
{{- if and .enabled (or (not .gateways) (not .hosts)) }}
{{- fail "hyperfleetApi.virtualService: set gateways (e.g. istio-system/development-gateway) and hosts" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The broker CA bundle of a component's broker.external (caBundle.configMap or .secret), if any. */}}
{{- define "hf.brokerCa.enabled" -}}
{{- $c := .broker.external.caBundle -}}
{{- if and .broker.external.enabled (or $c.configMap $c.secret) }}true{{ end }}
{{- end }}

{{- define "hf.brokerCert.enabled" -}}
{{- if and .broker.external.enabled .broker.external.clientCertificate.secret }}true{{ end }}
{{- end }}

{{/* OpenTelemetry settings of global.tracing for one component: (dict "root" $ "service" "hyperfleet-api"). */}}
{{- define "hf.tracing.env" -}}
{{- $t := .root.Values.global.tracing | default dict }}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | default "parentbased_always_on" | quote }}
{{- if $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hf.brokerCa.env" -}}
{{- if include "hf.brokerCa.enabled" . }}
- name: HYPERFLEET_BROKER_CA_FILE
  value: /etc/hyperfleet/broker-ca/ca.crt
{{- end }}
{{- if include "hf.brokerCert.enabled" . }}
- name: HYPERFLEET_BROKER_CERT_FILE
  value: /etc/hyperfleet/broker-cert/tls.crt
- name: HYPERFLEET_BROKER_KEY_FILE
  value: /etc/hyperfleet/broker-cert/tls.key
{{- end }}
{{- end }}

{{- define "hf.brokerCa.mount" -}}
{{- if include "hf.brokerCa.enabled" . }}
- {name: broker-ca, mountPath: /etc/hyperfleet/broker-ca, readOnly: true}
{{- end }}
{{- if include "hf.brokerCert.enabled" . }}
- {name: broker-cert, mountPath: /etc/hyperfleet/broker-cert, readOnly: true}
{{- end }}
{{- end }}

{{- define "hf.brokerCa.volume" -}}
{{- $c := .broker.external.caBundle -}}
{{- if include "hf.brokerCa.enabled" . }}
- name: broker-ca
  {{- if $c.configMap }}
  configMap:
    name: {{ $c.configMap }}
  {{- else }}
  secret:
    secretName: {{ $c.secret }}
  {{- end }}
    items: [{key: {{ $c.key | quote }}, path: ca.crt}]
{{- end }}
{{- $t := .broker.external.clientCertificate -}}
{{- if include "hf.brokerCert.enabled" . }}
- name: broker-cert
  secret:
    secretName: {{ $t.secret }}
    defaultMode: 0440
    items: [{key: {{ $t.certKey | quote }}, path: tls.crt}, {key: {{ $t.keyKey | quote }}, path: tls.key}]
{{- end }}
{{- end }}

{{/* The Secret holding BROKER_RABBITMQ_URL for a component (name: hyperfleet-sentinel or hyperfleet-adapter). */}}
{{- define "hf.mqSecretName" -}}
{{- $e := .v.broker.external -}}
{{- if not $e.enabled -}}hyperfleet-rabbitmq
{{- else if and (not $e.usePodIdentity) $e.existingSecret -}}{{ $e.existingSecret }}
{{- else -}}{{ .name }}-mq-secret
{{- end -}}
{{- end }}

{{- define "hf.mqSecretKey" -}}
{{- if .v.broker.external.enabled }}BROKER_RABBITMQ_URL{{ else }}url{{ end -}}
{{- end }}

{{/* The Secret the chart creates from broker.external.url (no Pod Identity). */}}
{{- define "hf.mqSecret" -}}
{{- $e := .v.broker.external -}}
{{- if and $e.enabled (not $e.usePodIdentity) $e.url }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ .name }}-mq-secret
  namespace: {{ .root.Values.namespace }}
  labels: {{- include "hf.labels" .ctx | nindent 4 }}
type: Opaque
stringData:
  BROKER_RABBITMQ_URL: {{ $e.url | quote }}
{{- end }}
{{- end }}

{{/* The broker.yaml the sentinel and the adapter read through BROKER_CONFIG_FILE. */}}
{{- define "hf.brokerYaml" -}}
broker:
  type: rabbitmq
  rabbitmq:
    # The URL comes from the BROKER_RABBITMQ_URL variable (a Secret).
    url: ""
    exchange: {{ .exchange | quote }}
    exchange_type: {{ .exchangeType | quote }}
{{- with .queue }}
    queue: {{ . | quote }}
{{- end }}
{{- with .routingKey }}
    routing_key: {{ . | quote }}
{{- end }}
{{- with .prefetch }}
    prefetch_count: {{ . }}
{{- end }}
{{- end }}

{{/* Ports a component's traffic leaves on without the sidecar (database or broker). */}}
{{- define "hf.brokerPorts" -}}
{{- $p := list -}}
{{- range .Values.networkPolicy.egress.broker }}{{ $p = append $p (toString .) }}{{ end -}}
{{ join "," $p }}
{{- end }}

{{/*
Cluster-scoped objects are named after the namespace: every namespaced object of the chart has a fixed
name, so a namespace holds one release, and two releases (in two namespaces) never collide.
*/}}
{{- define "hf.clusterScopedName" -}}
{{ printf "%s-hyperfleet-adapter" .Values.namespace }}
{{- end }}

{{/* Env entries shared by every component: extraEnv last, so it can add but not silently replace. */}}
{{- define "hf.extraEnv" -}}
{{- with .extraEnv }}{{ toYaml . }}{{ end }}
{{- end }}

{{/*
The workloads the values ask for, resolved once per template: include returns text only, so they are
left in the dict passed as `out` — (dict "root" $ "out" $w), then $w.adapters, $w.sentinels and
$w.components. Resolving them also checks them (each problem fails with one sentence), so whichever
template resolves them first refuses a broken adapter list.

adapters: hyperfleetAdapter first (its objects keep their fixed names), then every hyperfleetAdapters
entry, whose pod settings left unset are hyperfleetAdapter's. Each: first, where (the values path, for
messages), name, resource, component, base (the Deployment, Service and ConfigMap name), sa,
clusterRole, task ({builtin} or {inline}), taskText, required (counted in the API's
required_adapters), rbacCreate, rules, queue, routingKey, exchange, v (image, broker, aws and pod
settings).
sentinels: hyperfleetSentinel, then a nodepool sentinel when an adapter reads nodepools (and the first
one announces clusters). Each: first, resource, component, base, exchange.
components: api, sentinel, adapter, then sentinel-nodepools and adapter-<name> when rendered (the
`component` of each workload's labels; hyperfleet-<component> is its name label and its Service).
*/}}
{{- define "hf.workloads" -}}
{{- $root := .root -}}
{{- $first := $root.Values.hyperfleetAdapter -}}
{{- $req := $root.Values.hyperfleetApi.requiredAdapters -}}
{{- $s := $root.Values.hyperfleetSentinel -}}
{{- $verbs := list "get" "list" "watch" "create" "update" "patch" "delete" -}}
{{- /* The built-in tasks (files/<builtin>.yaml) and the core resources each applies. */ -}}
{{- $builtins := dict "landing-zone" (list "namespaces" "serviceaccounts") "nodepool-configmap" (list "configmaps") -}}
{{- $resource := $first.resource | default "clusters" -}}
{{- $e := $first.broker.external -}}
{{- $name := toString ($first.name | default "") -}}
{{- $adapters := list (dict "first" true "where" "hyperfleetAdapter" "name" $name "resource" $resource "component" "adapter" "base" "hyperfleet-adapter" "sa" "hyperfleet-adapter-sa" "clusterRole" (include "hf.clusterScopedName" $root) "task" ($first.task | default dict) "required" (has $name (index $req $resource | default list)) "rbacCreate" $first.rbac.create "rules" (list (dict "apiGroups" (list "") "resources" $first.rbac.resources "verbs" $verbs)) "queue" $e.queue "routingKey" $e.routingKey "exchange" $e.exchange "v" $first) -}}
{{- range $i, $entry := $root.Values.hyperfleetAdapters }}
{{- $name := toString ($entry.name | default "") }}
{{- $res := $entry.resource | default "clusters" }}
{{- $task := $entry.task | default dict }}
{{- $v := deepCopy $first }}
{{- range $k := list "replicaCount" "prefetch" "resources" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "priorityClassName" "podAnnotations" "podLabels" "extraEnv" "extraVolumes" "extraVolumeMounts" }}
{{- if and (hasKey $entry $k) (not (kindIs "invalid" (index $entry $k))) }}{{ $_ := set $v $k (index $entry $k) }}{{ end }}
{{- end }}
{{- range $k := list "serviceAccount" "service" }}
{{- $o := index $entry $k | default dict }}
{{- if hasKey $o "annotations" }}{{ $_ := set $v $k (dict "annotations" ($o.annotations | default dict)) }}{{ end }}
{{- end }}
{{- $rbac := $entry.rbac | default dict }}
{{- $rules := list }}
{{- if $rbac.rules }}
{{- range $rbac.rules }}{{ $rules = append $rules (merge (deepCopy .) (dict "verbs" $verbs)) }}{{ end }}
{{- else if and $task.builtin (hasKey $builtins (toString $task.builtin)) }}
{{- $rules = list (dict "apiGroups" (list "") "resources" (index $builtins (toString $task.builtin)) "verbs" $verbs) }}
{{- end }}
{{- $adapters = append $adapters (dict "first" false "where" (printf "hyperfleetAdapters[%d] (%s)" $i $name) "name" $name "resource" $res "component" (printf "adapter-%s" $name) "base" (printf "hyperfleet-adapter-%s" $name) "sa" (printf "hyperfleet-adapter-%s-sa" $name) "clusterRole" (printf "%s-%s" (include "hf.clusterScopedName" $root) $name) "task" $task "required" (ternary $entry.required true (hasKey $entry "required")) "rbacCreate" (ternary $rbac.create true (hasKey $rbac "create")) "rules" $rules "queue" ($entry.queue | default (printf "hyperfleet-%s-%s" $res $name)) "routingKey" ($entry.routingKey | default "#") "exchange" ($entry.exchange | default (include "hf.sentinelExchange" (dict "root" $root "resource" $res))) "v" $v) }}
{{- end }}
{{- /* Checks, in the order of the list. */ -}}
{{- $names := list -}}
{{- range $a := $adapters }}
{{- $w := $a.where }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $a.name) }}
{{- fail (printf "%s: name %q must be a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)" $w $a.name) }}
{{- end }}
{{- if and (not $a.first) (gt (len $a.name) 40) }}
{{- fail (printf "%s: name must be at most 40 characters (its objects are named hyperfleet-adapter-<name>…)" $w) }}
{{- end }}
{{- if regexMatch "(^|-)(broker|task)$" $a.name }}
{{- fail (printf "%s: name %q would give two ConfigMaps one name (hyperfleet-adapter-…-broker-config, -task-config); choose a name that does not end in broker or task" $w $a.name) }}
{{- end }}
{{- if has $a.name $names }}
{{- fail (printf "%s: the name %q is taken by another adapter; every adapter needs its own" $w $a.name) }}
{{- end }}
{{- $names = append $names $a.name }}
{{- if and $a.task.builtin $a.task.inline }}
{{- fail (printf "%s.task: set builtin or inline, not both%s" $w (ternary " (to replace the default builtin with an inline task, set task.builtin: null)" "" $a.first)) }}
{{- end }}
{{- if not (or $a.task.builtin $a.task.inline) }}
{{- fail (printf "%s.task: set builtin (%s) or inline (the text of a task file)" $w (keys $builtins | sortAlpha | join " or ")) }}
{{- end }}
{{- if and $a.task.builtin (not (hasKey $builtins (toString $a.task.builtin))) }}
{{- fail (printf "%s.task.builtin: there is no built-in task %q (the built-in tasks: %s)" $w (toString $a.task.builtin) (keys $builtins | sortAlpha | join ", ")) }}
{{- end }}
{{- $text := ternary ($root.Files.Get (printf "files/%s.yaml" (toString $a.task.builtin))) (toString $a.task.inline) (not (empty $a.task.builtin)) }}
{{- $parsed := fromYaml $text }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "%s.task.inline is not a YAML task file: %s" $w $parsed.Error) }}
{{- end }}
{{- if ne (toString $parsed.resource) $a.resource }}
{{- fail (printf "%s: the task reads %q (its resource:) but the adapter's resource is %q; set them alike" $w (toString ($parsed.resource | default "")) $a.resource) }}
{{- end }}
{{- $_ := set $a "taskText" $text }}
{{- if and $a.rbacCreate (not $a.rules) }}
{{- fail (printf "%s.rbac.rules: list what its task's objects need (ClusterRole rules, e.g. {apiGroups: [\"\"], resources: [configmaps]}), or set rbac.create=false" $w) }}
{{- end }}
{{- $want := include "hf.sentinelExchange" (dict "root" $root "resource" $a.resource) }}
{{- if not $want }}
{{- fail (printf "%s reads %s, but hyperfleetSentinel.config.resourceType is %s and no sentinel announces %s; set resourceType to clusters (a nodepool sentinel is added for nodepool adapters)" $w $a.resource $s.config.resourceType $a.resource) }}
{{- end }}
{{- if and $s.broker.external.enabled $first.broker.external.enabled (ne $a.exchange $want) }}
{{- if and $a.first (eq $a.resource $s.config.resourceType) }}
{{- fail (printf "hyperfleetSentinel publishes to exchange %q but hyperfleetAdapter binds to %q: set broker.external.exchange alike" $want $a.exchange) }}
{{- else }}
{{- fail (printf "%s binds to exchange %q but the sentinel announcing %s publishes to %q: leave its exchange unset or set it alike" $w $a.exchange $a.resource $want) }}
{{- end }}
{{- end }}
{{- end }}
{{- $sentinels := list (dict "first" true "resource" $s.config.resourceType "component" "sentinel" "base" "hyperfleet-sentinel" "exchange" $s.broker.external.exchange) -}}
{{- $components := list "api" "sentinel" "adapter" -}}
{{- $nodepools := false -}}
{{- range $adapters }}{{ if eq .resource "nodepools" }}{{ $nodepools = true }}{{ end }}{{ end -}}
{{- if and $nodepools (ne $s.config.resourceType "nodepools") -}}
{{- $sentinels = append $sentinels (dict "first" false "resource" "nodepools" "component" "sentinel-nodepools" "base" "hyperfleet-sentinel-nodepools" "exchange" (include "hf.sentinelExchange" (dict "root" $root "resource" "nodepools"))) -}}
{{- $components = append $components "sentinel-nodepools" -}}
{{- end -}}
{{- range (rest $adapters) }}{{ $components = append $components .component }}{{ end -}}
{{- $_ := set .out "adapters" $adapters -}}
{{- $_ := set .out "sentinels" $sentinels -}}
{{- $_ := set .out "components" $components -}}
{{- end }}

{{/*
The exchange the sentinel announcing a resource (clusters or nodepools) publishes to: hyperfleetSentinel's
for its resourceType, broker.external.nodepoolsExchange (hyperfleet-nodepools) for the nodepool sentinel;
empty when none announces it.
*/}}
{{- define "hf.sentinelExchange" -}}
{{- $s := .root.Values.hyperfleetSentinel -}}
{{- if eq .resource $s.config.resourceType -}}{{ $s.broker.external.exchange }}
{{- else if eq .resource "nodepools" -}}{{ $s.broker.external.nodepoolsExchange | default "hyperfleet-nodepools" }}
{{- end -}}
{{- end }}

{{/* ClusterRole rules (PolicyRules): apiGroups, resources, any other keys, then verbs. */}}
{{- define "hf.policyRules" -}}
{{- range . }}
- apiGroups: {{ toJson .apiGroups }}
  {{- with .resources }}
  resources: {{ toJson . }}
  {{- end }}
  {{- with omit . "apiGroups" "resources" "verbs" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  verbs: [{{ range $i, $v := .verbs }}{{ if $i }}, {{ end }}{{ $v | quote }}{{ end }}]
{{- end }}
{{- end }}
