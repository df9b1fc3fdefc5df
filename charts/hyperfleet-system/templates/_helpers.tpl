{{/* Common labels; `component` is api, sentinel or adapter. */}}
{{- define "hf.labels" -}}
app.kubernetes.io/name: hyperfleet-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: hyperfleet
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ .root.Chart.Name }}-{{ .root.Chart.Version }}
{{- end }}

{{- define "hf.selector" -}}
app.kubernetes.io/name: hyperfleet-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "hf.image" -}}
{{ printf "%s/%s:%s" .registry .repository .tag }}
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
{{- end }}

{{/* The ServiceAccount annotation for AWS Pod Identity / IRSA. */}}
{{- define "hf.awsAnnotations" -}}
{{- if and .aws.podIdentity.enabled .aws.podIdentity.roleArn }}
annotations:
  eks.amazonaws.com/role-arn: {{ .aws.podIdentity.roleArn | quote }}
{{- end }}
{{- end }}

{{/* Whether any component uses the development RabbitMQ. */}}
{{- define "hf.devRabbitmq" -}}
{{- if or .Values.hyperfleetSentinel.broker.rabbitmq.enabled .Values.hyperfleetAdapter.broker.rabbitmq.enabled }}true{{ end }}
{{- end }}

{{/* A generated password kept across upgrades (looked up from the existing Secret). */}}
{{- define "hf.password" -}}
{{- $existing := lookup "v1" "Secret" .namespace .secret -}}
{{- if and $existing (index $existing.data .key) -}}
{{ index $existing.data .key | b64dec }}
{{- else -}}
{{ randAlphaNum 32 }}
{{- end -}}
{{- end }}

{{/* The broker CA bundle of a component's broker.external (caBundle.configMap or .secret), if any. */}}
{{- define "hf.brokerCa.enabled" -}}
{{- $c := .broker.external.caBundle -}}
{{- if and $c.configMap $c.secret }}
{{- fail (printf "%s.broker.external.caBundle: set configMap or secret, not both" .component) }}
{{- end }}
{{- if and .broker.external.enabled (not .broker.rabbitmq.enabled) (or $c.configMap $c.secret) }}true{{ end }}
{{- end }}

{{- define "hf.brokerCa.env" -}}
{{- if include "hf.brokerCa.enabled" . }}
- name: HYPERFLEET_BROKER_CA_FILE
  value: /etc/hyperfleet/broker-ca/ca.crt
{{- end }}
{{- end }}

{{- define "hf.brokerCa.mount" -}}
{{- if include "hf.brokerCa.enabled" . }}
- {name: broker-ca, mountPath: /etc/hyperfleet/broker-ca, readOnly: true}
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

{{/* Cluster-scoped objects are named after the namespace, so installs in two namespaces never collide. */}}
{{- define "hf.clusterScopedName" -}}
{{ printf "%s-hyperfleet-adapter" .Values.namespace }}
{{- end }}
