{{/*
Naming and labels. Selector labels are only app.kubernetes.io/name and /instance: a selector
is immutable, so it must never contain anything that changes on upgrade (chart version).
*/}}

{{- define "etcd-config-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "etcd-config-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "etcd-config-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "etcd-config-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcd-config-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "etcd-config-sidecar.labels" -}}
helm.sh/chart: {{ include "etcd-config-sidecar.chart" . }}
{{ include "etcd-config-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "etcd-config-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "etcd-config-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "etcd-config-sidecar.configMapName" -}}
{{- printf "%s-config" (include "etcd-config-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "repository:tag" or "repository@digest" for an image dict; $.default is the fallback tag. */}}
{{- define "etcd-config-sidecar.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else if or .image.tag .default }}
{{- printf "%s:%s" .image.repository (default .default .image.tag) }}
{{- else }}
{{- fail (printf "image %s: set a tag or a digest (images are pinned)" .image.repository) }}
{{- end }}
{{- end }}

{{/*
"native" or "classic". auto picks native where the SidecarContainers feature is on by default
(Kubernetes 1.29+); asking for native on an older cluster fails instead of rendering a pod spec
that kubelet would reject.
*/}}
{{- define "etcd-config-sidecar.mode" -}}
{{- $native := semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- $mode := .Values.sidecar.mode }}
{{- if eq $mode "auto" }}
{{- ternary "native" "classic" $native }}
{{- else if and (eq $mode "native") (not $native) }}
{{- fail (printf "sidecar.mode=native needs Kubernetes 1.29 or newer (this cluster is %s); set sidecar.mode=classic or auto" .Capabilities.KubeVersion.Version) }}
{{- else }}
{{- $mode }}
{{- end }}
{{- end }}

{{/* "true" when any output has a signal on-change action (needs shareProcessNamespace). */}}
{{- define "etcd-config-sidecar.signalConfigured" -}}
{{- $signal := false }}
{{- if .Values.config.outputs }}
{{- range .Values.config.outputs }}
{{- if and .on_change .on_change.signal }}{{ $signal = true }}{{ end }}
{{- end }}
{{- else if .Values.config.onChange.signal }}
{{- $signal = true }}
{{- end }}
{{- if $signal }}true{{ end }}
{{- end }}

{{/* "true" when the ConfigMap (config file and/or templates) is rendered and mounted. */}}
{{- define "etcd-config-sidecar.configMapNeeded" -}}
{{- if or .Values.config.outputs .Values.templates }}true{{ end }}
{{- end }}

{{/* Mount points inside the sidecar container; fixed so that docs and tests can name them. */}}
{{- define "etcd-config-sidecar.configDir" -}}/etc/etcd-config-sidecar/config{{- end }}
{{- define "etcd-config-sidecar.tlsDir" -}}/etc/etcd-config-sidecar/tls{{- end }}
{{- define "etcd-config-sidecar.authDir" -}}/etc/etcd-config-sidecar/auth{{- end }}

{{/* A template reference: a bare name is a file of `templates`, an absolute path is kept. */}}
{{- define "etcd-config-sidecar.templatePath" -}}
{{- if hasPrefix "/" .name }}{{ .name }}{{ else }}{{ printf "%s/templates/%s" .dir .name }}{{ end }}
{{- end }}

{{/* The program's config file (SIDECAR_CONFIG) when config.outputs is used. */}}
{{- define "etcd-config-sidecar.configFile" -}}
{{- $outputDir := .Values.sidecar.outputDir }}
{{- $configDir := include "etcd-config-sidecar.configDir" . }}
{{- $outputs := list }}
{{- range .Values.config.outputs }}
{{- $out := deepCopy . }}
{{- $_ := set $out "path" (printf "%s/%s" $outputDir .path) }}
{{- if .template }}
{{- $_ := set $out "template" (include "etcd-config-sidecar.templatePath" (dict "name" .template "dir" $configDir)) }}
{{- end }}
{{- $outputs = append $outputs $out }}
{{- end }}
{{- toYaml (dict "outputs" $outputs) }}
{{- end }}

{{/* "host:port" for SIDECAR_LISTEN, with brackets around IPv6 addresses. */}}
{{- define "etcd-config-sidecar.listen" -}}
{{- $host := .Values.sidecar.listenAddress }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- printf "%s:%d" $host (int .Values.sidecar.port) }}
{{- end }}

{{/* Environment of the sidecar and of its once init container. */}}
{{- define "etcd-config-sidecar.env" -}}
{{- $v := .Values }}
{{- $c := $v.config -}}
- name: SIDECAR_ETCD_ENDPOINTS
  value: {{ join "," $v.etcd.endpoints | quote }}
{{- if and $v.etcd.auth.existingSecret $v.etcd.auth.usernameKey }}
- name: SIDECAR_ETCD_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $v.etcd.auth.existingSecret }}
      key: {{ $v.etcd.auth.usernameKey }}
{{- else if $v.etcd.username }}
- name: SIDECAR_ETCD_USERNAME
  value: {{ $v.etcd.username | quote }}
{{- end }}
{{- if $v.etcd.auth.existingSecret }}
- name: SIDECAR_ETCD_PASSWORD_FILE
  value: {{ printf "%s/%s" (include "etcd-config-sidecar.authDir" .) $v.etcd.auth.passwordKey | quote }}
{{- end }}
{{- with $v.etcd.tls }}
{{- if .existingSecret }}
{{- $dir := include "etcd-config-sidecar.tlsDir" $ }}
{{- if .caKey }}
- name: SIDECAR_ETCD_CA_FILE
  value: {{ printf "%s/%s" $dir .caKey | quote }}
{{- end }}
{{- if and .certKey .keyKey }}
- name: SIDECAR_ETCD_CERT_FILE
  value: {{ printf "%s/%s" $dir .certKey | quote }}
- name: SIDECAR_ETCD_KEY_FILE
  value: {{ printf "%s/%s" $dir .keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if $c.outputs }}
- name: SIDECAR_CONFIG
  value: {{ printf "%s/config.yaml" (include "etcd-config-sidecar.configDir" .) | quote }}
{{- else }}
{{- if not (or $c.prefixes $c.keys) }}
{{- fail "config: set config.prefixes or config.keys (what to mirror), or config.outputs" }}
{{- end }}
{{- if $c.prefixes }}
- name: SIDECAR_PREFIX
  value: {{ join "," $c.prefixes | quote }}
{{- end }}
{{- if $c.keys }}
- name: SIDECAR_KEY
  value: {{ join "," $c.keys | quote }}
{{- end }}
- name: SIDECAR_OUTPUT
  value: {{ printf "%s/%s" $v.sidecar.outputDir $c.file | quote }}
- name: SIDECAR_FORMAT
  value: {{ $c.format | quote }}
{{- if eq $c.format "template" }}
{{- if not $c.template }}
{{- fail "config.template: format \"template\" needs config.template (a name from templates, or an absolute path)" }}
{{- end }}
{{- if and (not (hasPrefix "/" $c.template)) (not (hasKey $v.templates $c.template)) }}
{{- fail (printf "config.template: %q is neither a key of templates nor an absolute path" $c.template) }}
{{- end }}
- name: SIDECAR_TEMPLATE
  value: {{ include "etcd-config-sidecar.templatePath" (dict "name" $c.template "dir" (include "etcd-config-sidecar.configDir" .)) | quote }}
{{- end }}
- name: SIDECAR_FILE_MODE
  value: {{ $c.fileMode | quote }}
{{- with $c.onChange }}
{{- if .signal }}
- name: SIDECAR_ON_CHANGE_SIGNAL
  value: {{ .signal | quote }}
{{- end }}
{{- if .url }}
- name: SIDECAR_ON_CHANGE_URL
  value: {{ .url | quote }}
{{- end }}
{{- if .exec }}
- name: SIDECAR_ON_CHANGE_EXEC
  value: {{ .exec | quote }}
{{- end }}
{{- end }}
{{- end }}
- name: SIDECAR_DEBOUNCE
  value: {{ $c.debounce | toString | quote }}
- name: SIDECAR_RESYNC_INTERVAL
  value: {{ $c.resyncInterval | toString | quote }}
- name: SIDECAR_MAX_STALENESS
  value: {{ $c.maxStaleness | toString | quote }}
- name: SIDECAR_ALLOW_EMPTY
  value: {{ $c.allowEmpty | toString | quote }}
- name: SIDECAR_LISTEN
  value: {{ include "etcd-config-sidecar.listen" . | quote }}
- name: SIDECAR_LOOKUP_ACCESS
  value: {{ $c.lookupAccess | quote }}
- name: SIDECAR_REDACT
  value: {{ join "," $c.redact | quote }}
- name: SIDECAR_TIMEOUT
  value: {{ $c.timeout | toString | quote }}
- name: SIDECAR_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
- name: SIDECAR_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: SIDECAR_KUBERNETES_EVENTS
  value: {{ ternary "on" "off" $v.kubernetesEvents.enabled | quote }}
# The Pod's identity, for Kubernetes Events on it and for log context.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
# kubectl describe pod selects Events by the Pod's uid as well as its name.
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- with $v.sidecar.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts of the sidecar and of its once init container. */}}
{{- define "etcd-config-sidecar.sidecarVolumeMounts" -}}
- name: {{ .Values.volume.name }}
  mountPath: {{ .Values.sidecar.outputDir }}
{{- if include "etcd-config-sidecar.configMapNeeded" . }}
- name: {{ .Values.volume.name }}-sidecar-config
  mountPath: {{ include "etcd-config-sidecar.configDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.etcd.tls.existingSecret }}
- name: {{ .Values.volume.name }}-etcd-tls
  mountPath: {{ include "etcd-config-sidecar.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.etcd.auth.existingSecret }}
- name: {{ .Values.volume.name }}-etcd-auth
  mountPath: {{ include "etcd-config-sidecar.authDir" . }}
  readOnly: true
{{- end }}
{{- if and .Values.kubernetesEvents.enabled (not .Values.serviceAccount.automountToken) }}
- name: {{ .Values.volume.name }}-kube-api
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end }}
{{- with .Values.sidecar.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
etcd-config-sidecar.container: the sidecar as one container list item. In native mode it goes
under initContainers (it carries restartPolicy: Always), in classic mode under containers.
Other charts include it with the sidecar chart's own context, for example:
  {{- $sidecar := index .Subcharts "etcd-config-sidecar" }}
  initContainers:
    {{- include "etcd-config-sidecar.container" $sidecar | nindent 4 }}
*/}}
{{- define "etcd-config-sidecar.container" -}}
{{- $mode := include "etcd-config-sidecar.mode" . -}}
- name: {{ .Values.sidecar.containerName }}
  image: {{ include "etcd-config-sidecar.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- with .Values.sidecar.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if eq $mode "native" }}
  # Native sidecar: kubelet starts the app only after the startupProbe below has passed, keeps
  # this container running beside it, and stops it after the app (so Jobs complete).
  restartPolicy: Always
  {{- end }}
  env:
    {{- include "etcd-config-sidecar.env" . | nindent 4 }}
  ports:
    - name: sidecar-http
      containerPort: {{ .Values.sidecar.port }}
      protocol: TCP
  # /ready answers 200 once every output has been written from etcd since the process started.
  startupProbe:
    httpGet:
      path: /ready
      port: sidecar-http
    {{- toYaml .Values.sidecar.startupProbe | nindent 4 }}
  # /health does not depend on etcd: an etcd outage must not restart the sidecar (the last good
  # file stays in place and syncing resumes by itself).
  livenessProbe:
    httpGet:
      path: /health
      port: sidecar-http
    {{- toYaml .Values.sidecar.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /ready
      port: sidecar-http
    {{- toYaml .Values.sidecar.readinessProbe | nindent 4 }}
  {{- with .Values.sidecar.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "etcd-config-sidecar.sidecarVolumeMounts" . | nindent 4 }}
{{- end }}

{{/*
etcd-config-sidecar.onceContainer: `etcd-config-sidecar once` as an init container (classic mode
with sidecar.initOnce), so the app starts with every output in place. Renders nothing otherwise.
*/}}
{{- define "etcd-config-sidecar.onceContainer" -}}
{{- if and (eq (include "etcd-config-sidecar.mode" .) "classic") .Values.sidecar.initOnce -}}
- name: {{ printf "%s-once" .Values.sidecar.containerName | trunc 63 | trimSuffix "-" }}
  image: {{ include "etcd-config-sidecar.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["once"]
  env:
    {{- include "etcd-config-sidecar.env" . | nindent 4 }}
  {{- with .Values.sidecar.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "etcd-config-sidecar.sidecarVolumeMounts" . | nindent 4 }}
{{- end }}
{{- end }}

{{/*
etcd-config-sidecar.appVolumeMount: the shared directory for an application container.
A whole-directory mount, never subPath: the sidecar replaces the file by an atomic rename (a new
inode), and a subPath mount stays bound to the inode that existed when the container started, so
the app would never see an update (and if the file did not exist yet, kubelet would create a
directory in its place).
*/}}
{{- define "etcd-config-sidecar.appVolumeMount" -}}
- name: {{ .Values.volume.name }}
  mountPath: {{ .Values.app.mountPath }}
  readOnly: true
{{- end }}

{{/*
etcd-config-sidecar.volumes: the pod volumes the sidecar needs, as list items: the shared
emptyDir, and the ConfigMap, Secrets and API token when configured.
*/}}
{{- define "etcd-config-sidecar.volumes" -}}
- name: {{ .Values.volume.name }}
  {{- if or .Values.volume.medium .Values.volume.sizeLimit }}
  emptyDir:
    {{- with .Values.volume.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.volume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if include "etcd-config-sidecar.configMapNeeded" . }}
- name: {{ .Values.volume.name }}-sidecar-config
  configMap:
    name: {{ include "etcd-config-sidecar.configMapName" . }}
    items:
      {{- if .Values.config.outputs }}
      - key: config.yaml
        path: config.yaml
      {{- end }}
      {{- range $name, $_ := .Values.templates }}
      - key: {{ printf "template.%s" $name }}
        path: {{ printf "templates/%s" $name }}
      {{- end }}
{{- end }}
{{- with .Values.etcd.tls }}
{{- if .existingSecret }}
- name: {{ $.Values.volume.name }}-etcd-tls
  secret:
    secretName: {{ .existingSecret }}
    # 0440 + the pod's fsGroup: readable by the non-root sidecar, by nobody else.
    defaultMode: 0440
    items:
      {{- if .caKey }}
      - key: {{ .caKey }}
        path: {{ .caKey }}
      {{- end }}
      {{- if and .certKey .keyKey }}
      - key: {{ .certKey }}
        path: {{ .certKey }}
      - key: {{ .keyKey }}
        path: {{ .keyKey }}
      {{- end }}
{{- end }}
{{- end }}
{{- with .Values.etcd.auth }}
{{- if .existingSecret }}
- name: {{ $.Values.volume.name }}-etcd-auth
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .passwordKey }}
        path: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- if and .Values.kubernetesEvents.enabled (not .Values.serviceAccount.automountToken) }}
# The API token for Kubernetes Events, mounted into the sidecar container only (the pod's
# automountServiceAccountToken is off, so the app gets no token). Same content and layout as the
# volume kubelet would add, so the client's in-cluster configuration finds it.
- name: {{ .Values.volume.name }}-kube-api
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end }}
{{- end }}
