{{/*
Names, labels and the shared pieces of every workload.
*/}}

{{- define "interop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "interop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: (dict "root" $ "component" "routing") */}}
{{- define "interop.componentName" -}}
{{- printf "%s-%s" (include "interop.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "interop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "interop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "interop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "interop.labels" -}}
helm.sh/chart: {{ include "interop.chart" . }}
{{ include "interop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: interop
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "routing") */}}
{{- define "interop.componentLabels" -}}
{{ include "interop.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "interop.componentSelectorLabels" -}}
{{ include "interop.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The five services: component name -> values key, and whether the service
has a WebSocket port and reads the provider registry.
*/}}
{{- define "interop.components" -}}
ingest:
  key: ingest
  edge: true
  providers: true
  portName: ws
  listenEnv: INTEROP_INGEST_LISTEN
spam-scoring:
  key: spamScoring
  edge: false
routing:
  key: routing
  edge: false
media-transcoding:
  key: mediaTranscoding
  edge: false
  providers: true
  portName: media
  listenEnv: INTEROP_MEDIA_TRANSCODING_LISTEN
delivery:
  key: delivery
  edge: true
  providers: true
  portName: ws
  listenEnv: INTEROP_DELIVERY_LISTEN
{{- end -}}

{{/*
An image reference: (dict "root" $ "image" <a service's image values, or nil>).
Each field falls back to the top-level `image`; global.imageRegistry wins over
both registries; a digest wins over a tag. The top-level digest is only used
while the service keeps the top-level repository and sets no tag of its own.
*/}}
{{- define "interop.image" -}}
{{- $root := .root -}}
{{- $top := $root.Values.image -}}
{{- $own := default dict .image -}}
{{- $registry := default $top.registry $own.registry -}}
{{- with ($root.Values.global).imageRegistry }}{{ $registry = . }}{{ end -}}
{{- $repository := default $top.repository $own.repository -}}
{{- $digest := $own.digest -}}
{{- if and (not $digest) (not $own.tag) (eq $repository $top.repository) -}}
{{- $digest = $top.digest -}}
{{- end -}}
{{- $ref := $repository -}}
{{- if $registry -}}
{{- $ref = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if $digest -}}
{{- printf "%s@%s" $ref $digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default (default $root.Chart.AppVersion $top.tag) $own.tag) -}}
{{- end -}}
{{- end -}}

{{- define "interop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "interop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "interop.natsUrl" -}}
{{- required "externalNats.url is required" .Values.externalNats.url -}}
{{- end -}}

{{/* host:port of the NATS monitoring endpoint for KEDA. */}}
{{- define "interop.natsMonitoringEndpoint" -}}
{{- required "externalNats.monitoringEndpoint is required for KEDA" .Values.externalNats.monitoringEndpoint -}}
{{- end -}}

{{/* Redis URL without a password. */}}
{{- define "interop.redisUrl" -}}
{{- required "externalRedis.url is required" .Values.externalRedis.url -}}
{{- end -}}

{{/* Where the Redis password lives, as YAML {name, key}; empty when there is none. */}}
{{- define "interop.redisPasswordSecret" -}}
{{- if .Values.externalRedis.existingSecret -}}
name: {{ .Values.externalRedis.existingSecret }}
key: {{ .Values.externalRedis.existingSecretPasswordKey }}
{{- end -}}
{{- end -}}

{{/*
Connections to NATS, Redis and the OTLP collector: credentials and TLS
material come from Secrets (secretKeyRef or read-only volumes), never from
the ConfigMap. Each takes the root context.
*/}}

{{/* Fails rendering when the NATS, Redis or OTLP settings contradict each other. */}}
{{- define "interop.validateBackends" -}}
{{- $n := .Values.externalNats -}}
{{- if and (ne $n.auth.type "none") (not $n.auth.existingSecret) -}}
{{- fail (printf "externalNats.auth.type=%s needs externalNats.auth.existingSecret (the Secret holding the credentials)" $n.auth.type) -}}
{{- end -}}
{{- if and (eq $n.auth.type "none") $n.auth.existingSecret -}}
{{- fail "externalNats.auth.existingSecret is set but externalNats.auth.type is none: set it to userPassword, creds or nkey" -}}
{{- end -}}
{{- if and $n.tls.existingSecret (not $n.tls.enabled) -}}
{{- fail "externalNats.tls.existingSecret is set but externalNats.tls.enabled is false: enable TLS or remove the Secret" -}}
{{- end -}}
{{- if and $n.tls.enabled (not $n.tls.existingSecret) (not (hasPrefix "tls://" $n.url)) -}}
{{- fail "externalNats.tls.enabled needs a tls:// URL (server certificate from a public CA) or externalNats.tls.existingSecret (the CA that signed it)" -}}
{{- end -}}
{{- if and $n.tls.clientCert (not $n.tls.existingSecret) -}}
{{- fail "externalNats.tls.clientCert needs externalNats.tls.existingSecret (holding the client certificate and key)" -}}
{{- end -}}
{{- $r := .Values.externalRedis -}}
{{- if and $r.existingSecretUsernameKey (not $r.existingSecret) -}}
{{- fail "externalRedis.existingSecretUsernameKey needs externalRedis.existingSecret" -}}
{{- end -}}
{{- if and $r.tls.enabled (not (hasPrefix "rediss://" $r.url)) -}}
{{- fail (printf "externalRedis.tls.enabled needs a rediss:// URL (TLS), not %s" (regexReplaceAll "://.*$" $r.url "://...")) -}}
{{- end -}}
{{- if and $r.tls.existingSecret (not $r.tls.enabled) -}}
{{- fail "externalRedis.tls.existingSecret is set but externalRedis.tls.enabled is false: enable TLS (and use a rediss:// URL) or remove the Secret" -}}
{{- end -}}
{{- if and $r.tls.clientCert (not $r.tls.existingSecret) -}}
{{- fail "externalRedis.tls.clientCert needs externalRedis.tls.existingSecret (holding the client certificate and key)" -}}
{{- end -}}
{{- $o := .Values.otel.tls -}}
{{- if and $o.existingSecret $o.existingConfigMap -}}
{{- fail "otel.tls: set either existingSecret or existingConfigMap, not both" -}}
{{- end -}}
{{- if and (or $o.existingSecret $o.existingConfigMap) (hasPrefix "http://" .Values.otel.endpoint) -}}
{{- fail "otel.tls gives a CA for the collector, but otel.endpoint is http://: use https://" -}}
{{- end -}}
{{- end -}}

{{/* True when the pods mount the OTLP collector's CA. */}}
{{- define "interop.otelCa" -}}
{{- if and .Values.otel.endpoint (or .Values.otel.tls.existingSecret .Values.otel.tls.existingConfigMap) -}}true{{- end -}}
{{- end -}}

{{/* NATS credentials and TLS files, as container env entries. */}}
{{- define "interop.natsEnv" -}}
{{- $n := .Values.externalNats -}}
{{- if eq $n.auth.type "userPassword" }}
- name: INTEROP_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $n.auth.existingSecret }}
      key: {{ $n.auth.userKey }}
- name: INTEROP_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $n.auth.existingSecret }}
      key: {{ $n.auth.passwordKey }}
{{- else if eq $n.auth.type "creds" }}
- name: INTEROP_NATS_CREDS_FILE
  value: /etc/interop/nats-auth/nats.creds
{{- else if eq $n.auth.type "nkey" }}
- name: INTEROP_NATS_NKEY_FILE
  value: /etc/interop/nats-auth/nkey.seed
{{- end }}
{{- if and $n.tls.enabled $n.tls.existingSecret }}
{{- if $n.tls.caKey }}
- name: INTEROP_NATS_TLS_CA_FILE
  value: /etc/interop/nats-tls/ca.crt
{{- end }}
{{- if $n.tls.clientCert }}
- name: INTEROP_NATS_TLS_CERT_FILE
  value: /etc/interop/nats-tls/tls.crt
- name: INTEROP_NATS_TLS_KEY_FILE
  value: /etc/interop/nats-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "interop.natsVolumeMounts" -}}
{{- $n := .Values.externalNats -}}
{{- if has $n.auth.type (list "creds" "nkey") }}
- name: nats-auth
  mountPath: /etc/interop/nats-auth
  readOnly: true
{{- end }}
{{- if and $n.tls.enabled $n.tls.existingSecret }}
- name: nats-tls
  mountPath: /etc/interop/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "interop.natsVolumes" -}}
{{- $n := .Values.externalNats -}}
{{- if has $n.auth.type (list "creds" "nkey") }}
- name: nats-auth
  secret:
    secretName: {{ $n.auth.existingSecret }}
    defaultMode: 0440
    items:
      {{- if eq $n.auth.type "creds" }}
      - key: {{ $n.auth.credsKey }}
        path: nats.creds
      {{- else }}
      - key: {{ $n.auth.nkeyKey }}
        path: nkey.seed
      {{- end }}
{{- end }}
{{- if and $n.tls.enabled $n.tls.existingSecret }}
{{ include "interop.tlsVolume" (dict "name" "nats-tls" "tls" $n.tls) }}
{{- end }}
{{- end -}}

{{/* A Secret volume of TLS files (ca.crt, and tls.crt/tls.key for a client certificate): (dict "name" volumeName "tls" tlsValues) */}}
{{- define "interop.tlsVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .tls.existingSecret }}
    defaultMode: 0440
    items:
      {{- if .tls.caKey }}
      - key: {{ .tls.caKey }}
        path: ca.crt
      {{- end }}
      {{- if .tls.clientCert }}
      - key: {{ .tls.certKey }}
        path: tls.crt
      - key: {{ .tls.keyKey }}
        path: tls.key
      {{- end }}
{{- end -}}

{{/* Redis credentials and TLS files, as container env entries. */}}
{{- define "interop.redisEnv" -}}
{{- $r := .Values.externalRedis -}}
{{- $pw := include "interop.redisPasswordSecret" . | fromYaml -}}
{{- if and $pw.name $r.existingSecretUsernameKey }}
- name: INTEROP_REDIS_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $pw.name }}
      key: {{ $r.existingSecretUsernameKey }}
{{- end }}
{{- if $pw.name }}
- name: INTEROP_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pw.name }}
      key: {{ $pw.key }}
{{- end }}
{{- if and $r.tls.enabled $r.tls.existingSecret }}
{{- if $r.tls.caKey }}
- name: INTEROP_REDIS_TLS_CA_FILE
  value: /etc/interop/redis-tls/ca.crt
{{- end }}
{{- if $r.tls.clientCert }}
- name: INTEROP_REDIS_TLS_CERT_FILE
  value: /etc/interop/redis-tls/tls.crt
- name: INTEROP_REDIS_TLS_KEY_FILE
  value: /etc/interop/redis-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "interop.redisVolumeMounts" -}}
{{- if and .Values.externalRedis.tls.enabled .Values.externalRedis.tls.existingSecret }}
- name: redis-tls
  mountPath: /etc/interop/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "interop.redisVolumes" -}}
{{- if and .Values.externalRedis.tls.enabled .Values.externalRedis.tls.existingSecret }}
{{ include "interop.tlsVolume" (dict "name" "redis-tls" "tls" .Values.externalRedis.tls) }}
{{- end }}
{{- end -}}

{{/* The OTLP collector's CA (OTEL_EXPORTER_OTLP_CERTIFICATE is the standard OpenTelemetry variable). */}}
{{- define "interop.otelEnv" -}}
{{- if include "interop.otelCa" . }}
- name: OTEL_EXPORTER_OTLP_CERTIFICATE
  value: /etc/interop/otel-tls/ca.crt
{{- end }}
{{- end -}}

{{- define "interop.otelVolumeMounts" -}}
{{- if include "interop.otelCa" . }}
- name: otel-tls
  mountPath: /etc/interop/otel-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "interop.otelVolumes" -}}
{{- $o := .Values.otel.tls -}}
{{- if include "interop.otelCa" . }}
- name: otel-tls
  {{- if $o.existingSecret }}
  secret:
    secretName: {{ $o.existingSecret }}
    defaultMode: 0440
  {{- else }}
  configMap:
    name: {{ $o.existingConfigMap }}
    defaultMode: 0440
  {{- end }}
    items:
      - key: {{ $o.caKey }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Port in a URL such as nats://host:4222, or the default given. (list url default) */}}
{{- define "interop.urlPort" -}}
{{- $url := index . 0 -}}
{{- $hostport := regexReplaceAll "^[a-z+]+://([^@/]*@)?([^/?]*).*$" $url "${2}" -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $hostport) -}}
{{- default (index . 1) $port -}}
{{- end -}}

{{- define "interop.providersSecretName" -}}
{{- if .Values.providers.existingSecret -}}
{{- .Values.providers.existingSecret -}}
{{- else -}}
{{- printf "%s-providers" (include "interop.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "interop.providersSecretKey" -}}
{{- if .Values.providers.existingSecret -}}
{{- .Values.providers.existingSecretKey -}}
{{- else -}}
providers.toml
{{- end -}}
{{- end -}}

{{/* Fails rendering unless exactly one source of the provider registry is set. */}}
{{- define "interop.validateTls" -}}
{{- if and .Values.tls.clientCa.existingSecret (not .Values.tls.existingSecret) -}}
{{- fail "tls.clientCa.existingSecret (mutual TLS) needs tls.existingSecret: ingest and delivery must serve TLS themselves to see client certificates" -}}
{{- end -}}
{{- end -}}

{{/*
The endpoints an Ingress or HTTPRoute can expose: key under ingress/httpRoute,
the service's component and values key, its Service port name, path and kind.
*/}}
{{- define "interop.endpoints" -}}
- {key: ingest, component: ingest, valuesKey: ingest, portName: ws, path: /v1/ws, pathType: Exact, kind: websocket}
- {key: delivery, component: delivery, valuesKey: delivery, portName: ws, path: /v1/ws, pathType: Exact, kind: websocket}
- {key: media, component: media-transcoding, valuesKey: mediaTranscoding, portName: media, path: /v1/media, pathType: Prefix, kind: media}
{{- end -}}

{{/*
Controller annotations for long-lived WebSockets and 100 MiB media uploads
(the largest media kind, docs/protocol.md): (dict "preset" name "kind" websocket|media).
*/}}
{{- define "interop.ingressPreset" -}}
{{- if eq .preset "ingress-nginx" -}}
{{- if eq .kind "websocket" }}
nginx.ingress.kubernetes.io/proxy-read-timeout: "3600"
nginx.ingress.kubernetes.io/proxy-send-timeout: "3600"
{{- else }}
nginx.ingress.kubernetes.io/proxy-body-size: 100m
nginx.ingress.kubernetes.io/proxy-request-buffering: "off"
nginx.ingress.kubernetes.io/proxy-read-timeout: "600"
nginx.ingress.kubernetes.io/proxy-send-timeout: "600"
{{- end }}
{{- else if eq .preset "traefik" }}
traefik.ingress.kubernetes.io/router.entrypoints: websecure
traefik.ingress.kubernetes.io/router.tls: "true"
{{- else if eq .preset "haproxy" }}
{{- if eq .kind "websocket" }}
haproxy.org/backend-config-snippet: timeout tunnel 1h
{{- else }}
haproxy.org/timeout-server: 10m
{{- end }}
{{- end }}
{{- end -}}

{{/* Fails when an Ingress or HTTPRoute is on but exposes nothing, or contradicts how TLS is set up. */}}
{{- define "interop.validateExposure" -}}
{{- range $kind := list "ingress" "httpRoute" -}}
{{- $x := index $.Values $kind -}}
{{- if $x.enabled -}}
{{- $field := ternary "hosts" "hostnames" (eq $kind "ingress") -}}
{{- $ingest := index $x.ingest $field -}}
{{- $delivery := index $x.delivery $field -}}
{{- if not (or $ingest $delivery (index $x.media $field)) -}}
{{- fail (printf "%s.enabled needs a host: set %s.ingest.%s, %s.delivery.%s and/or %s.media.%s" $kind $kind $field $kind $field $kind $field) -}}
{{- end -}}
{{- range $ingest -}}
{{- if has . $delivery -}}
{{- fail (printf "%s: %s is a host of both ingest and delivery, which both serve /v1/ws: give them different hosts" $kind .) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $kind "httpRoute") (not $x.parentRefs) -}}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway listener the routes attach to)" -}}
{{- end -}}
{{- $edge := or (and $ingest $.Values.ingest.enabled) (and $delivery $.Values.delivery.enabled) -}}
{{- if and $edge $.Values.tls.existingSecret -}}
{{- fail (printf "%s terminates TLS and speaks plain HTTP to ingest and delivery, but tls.existingSecret makes them serve TLS themselves: remove tls.existingSecret, or expose them with a LoadBalancer Service or TLS passthrough instead (mutual TLS needs that)" $kind) -}}
{{- end -}}
{{- if and $edge (not $.Values.tls.terminatedInFront) -}}
{{- fail (printf "%s terminates TLS in front of ingest and delivery: set tls.terminatedInFront=true (with false they refuse the plaintext the %s sends them)" $kind $kind) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Fails when a service's preStop sleep leaves no time to drain. */}}
{{- define "interop.validateShutdown" -}}
{{- range $component, $c := include "interop.components" . | fromYaml -}}
{{- $v := index $.Values $c.key -}}
{{- if and $v.enabled (ge (add (int $v.preStopSleepSeconds) 5) (int $v.terminationGracePeriodSeconds)) (gt (int $v.preStopSleepSeconds) 0) -}}
{{- fail (printf "%s.preStopSleepSeconds (%d) leaves no time to drain: terminationGracePeriodSeconds (%d) must be more than the sleep + 5" $c.key (int $v.preStopSleepSeconds) (int $v.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "interop.validateProviders" -}}
{{- if and .Values.providers.existingSecret .Values.providers.registry -}}
{{- fail "providers: set either providers.existingSecret or providers.registry, not both" -}}
{{- end -}}
{{- if not .Values.providers.registry -}}
{{- $_ := required "providers.existingSecret (a Secret holding the provider registry TOML) or providers.registry is required: the chart ships no default credentials. See docs/deploy.md, \"Configure providers\"." .Values.providers.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "interop.testSecretName" -}}
{{- if .Values.tests.existingSecret -}}
{{- .Values.tests.existingSecret -}}
{{- else -}}
{{- printf "%s-test-credentials" (include "interop.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* True when the helm test Pod has credentials and is rendered. */}}
{{- define "interop.testsActive" -}}
{{- if and .Values.tests.enabled .Values.ingest.enabled .Values.delivery.enabled (or .Values.tests.existingSecret .Values.tests.generateCredentials) -}}
true
{{- end -}}
{{- end -}}

{{/*
The generated test tokens, as YAML {sender, recipient}. Kept across upgrades
by reading the existing Secret (lookup is empty in `helm template`).
*/}}
{{- define "interop.generatedTestTokens" -}}
{{- if not (hasKey .Values.tests "__generatedTokens") -}}
{{- $name := printf "%s-test-credentials" (include "interop.fullname" .) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $tokens := dict "sender" (randAlphaNum 48) "recipient" (randAlphaNum 48) -}}
{{- $data := dict -}}
{{- if $existing -}}{{- $data = default dict $existing.data -}}{{- end -}}
{{- $sk := .Values.tests.senderTokenKey -}}
{{- $rk := .Values.tests.recipientTokenKey -}}
{{- if and (hasKey $data $sk) (hasKey $data $rk) -}}
{{- $tokens = dict "sender" (index $data $sk | b64dec) "recipient" (index $data $rk | b64dec) -}}
{{- end -}}
{{- /* Memoised: every template of this render must see the same tokens. */ -}}
{{- $_ := set .Values.tests "__generatedTokens" $tokens -}}
{{- end -}}
{{- toYaml (index .Values.tests "__generatedTokens") -}}
{{- end -}}

{{/* The common configuration every service reads (ConfigMap data). */}}
{{- define "interop.configData" -}}
INTEROP_NATS_URL: {{ include "interop.natsUrl" . | quote }}
INTEROP_REDIS_URL: {{ include "interop.redisUrl" . | quote }}
INTEROP_LOG: {{ .Values.log.level | quote }}
INTEROP_LOG_FORMAT: {{ .Values.log.format | quote }}
INTEROP_ADMIN_LISTEN: {{ printf "0.0.0.0:%d" (int .Values.adminPort) | quote }}
INTEROP_STREAM_REPLICAS: {{ .Values.jetstream.replicas | toString | quote }}
INTEROP_INBOX_MAX_AGE_SECS: {{ .Values.jetstream.inboxMaxAgeSeconds | int64 | toString | quote }}
INTEROP_INBOX_MAX_PER_RECIPIENT: {{ .Values.jetstream.inboxMaxPerRecipient | int64 | toString | quote }}
INTEROP_INBOX_PARTITIONS: {{ .Values.jetstream.inboxPartitions | int | toString | quote }}
INTEROP_ALLOW_PLAINTEXT: {{ .Values.tls.terminatedInFront | toString | quote }}
{{- $perAddress := int .Values.authThrottle.maxFailuresPerAddress }}
{{- if lt $perAddress 0 }}{{ $perAddress = ternary 20 0 (not (empty .Values.tls.existingSecret)) }}{{ end }}
INTEROP_AUTH_MAX_FAILURES_PER_ADDRESS: {{ $perAddress | toString | quote }}
INTEROP_AUTH_MAX_FAILURES_PER_PROVIDER: {{ .Values.authThrottle.maxFailuresPerProvider | int | toString | quote }}
INTEROP_AUTH_FAILURE_WINDOW_SECS: {{ .Values.authThrottle.windowSeconds | int | toString | quote }}
{{- with .Values.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
INTEROP_TRACE_SAMPLE_RATIO: {{ $.Values.otel.sampleRatio | toString | quote }}
{{- end }}
{{- end -}}

{{/* Environment of a service container beyond the ConfigMap: (dict "root" $ "component" name "c" componentInfo "v" values) */}}
{{- define "interop.serviceEnv" -}}
{{- $root := .root -}}
- name: OTEL_SERVICE_NAME
  value: {{ .component | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- /* Finish in-flight work 5 s before Kubernetes kills the container; the preStop sleep comes first. */}}
- name: INTEROP_SHUTDOWN_GRACE_SECS
  value: {{ max 1 (sub (sub (int .v.terminationGracePeriodSeconds) 5) (int .v.preStopSleepSeconds)) | toString | quote }}
{{- include "interop.natsEnv" $root }}
{{- include "interop.redisEnv" $root }}
{{- include "interop.otelEnv" $root }}
{{- if .c.listenEnv }}
- name: {{ .c.listenEnv }}
  value: {{ printf "0.0.0.0:%d" (int .v.containerPort) | quote }}
{{- end }}
{{- if .c.providers }}
- name: INTEROP_PROVIDERS_FILE
  value: /etc/interop/providers/providers.toml
{{- end }}
{{- if and (eq .component "spam-scoring") .v.policy }}
- name: INTEROP_SPAM_SCORING_POLICY
  value: /etc/interop/spam-policy/policy.toml
{{- end }}
{{- if and .c.edge $root.Values.tls.existingSecret }}
- name: INTEROP_TLS_CERT
  value: /etc/interop/tls/tls.crt
- name: INTEROP_TLS_KEY
  value: /etc/interop/tls/tls.key
{{- if $root.Values.tls.clientCa.existingSecret }}
- name: INTEROP_TLS_CLIENT_CA
  value: /etc/interop/client-ca/ca.crt
{{- end }}
{{- end }}
{{- if and (eq .component "ingest") .v.adminApi.enabled }}
- name: INTEROP_INGEST_ADMIN_API_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .v.adminApi.port) | quote }}
- name: INTEROP_ADMIN_TOKEN_FILE
  value: /etc/interop/admin-api/admin-token
{{- end }}
{{- if and (eq .component "ingest") .v.keyTransparency.enabled }}
- name: INTEROP_INGEST_KT_VRF_KEY_FILE
  value: /etc/interop/key-transparency/vrf-key
- name: INTEROP_INGEST_KT_EPOCH_INTERVAL_SECS
  value: {{ .v.keyTransparency.epochIntervalSecs | int | quote }}
{{- end }}
{{- end -}}

{{/*
The container's whole env: the chart's (serviceEnv), then the user's (`env`
map, then `extraEnvVars`). A name the user sets replaces the chart's entry, so
no name appears twice. Same argument as serviceEnv.
*/}}
{{- define "interop.containerEnv" -}}
{{- $user := list -}}
{{- range $name, $value := .v.env -}}
{{- $user = append $user (dict "name" $name "value" (toString $value)) -}}
{{- end -}}
{{- with .v.extraEnvVars -}}
{{- $user = concat $user (tpl (toYaml .) $.root | fromYamlArray) -}}
{{- end -}}
{{- $names := dict -}}
{{- range $user -}}
{{- if hasKey $names .name -}}
{{- fail (printf "%s: the environment variable %s is set twice (%s.env and %s.extraEnvVars)" $.c.key .name $.c.key $.c.key) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- end -}}
{{- $out := list -}}
{{- range (include "interop.serviceEnv" . | fromYamlArray) -}}
{{- if not (hasKey $names .name) -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- toYaml (concat $out $user) -}}
{{- end -}}

{{/* The container's lifecycle hooks: the user's, plus the default preStop sleep unless they give a preStop. */}}
{{- define "interop.lifecycle" -}}
{{- $hooks := deepCopy (default dict .v.lifecycleHooks) -}}
{{- if and (not (hasKey $hooks "preStop")) (gt (int .v.preStopSleepSeconds) 0) -}}
{{- $_ := set $hooks "preStop" (dict "exec" (dict "command" (list "sleep" (toString (int .v.preStopSleepSeconds))))) -}}
{{- end -}}
{{- if $hooks -}}
{{- tpl (toYaml $hooks) .root -}}
{{- end -}}
{{- end -}}

{{/* Pod-level checksums that roll the pods when their configuration changes. */}}
{{- define "interop.checksums" -}}
checksum/config: {{ include "interop.configData" .root | sha256sum }}
{{- if and (eq .c.key "spamScoring") .root.Values.spamScoring.policy }}
checksum/spam-policy: {{ .root.Values.spamScoring.policy | sha256sum }}
{{- end }}
{{- if and .c.providers (not .root.Values.providers.existingSecret) }}
checksum/providers: {{ include "interop.providersToml" .root | sha256sum }}
{{- end }}
{{- end -}}

{{/* The registry TOML rendered from providers.registry (plus generated test credentials). */}}
{{- define "interop.providersToml" -}}
{{- $root := . -}}
{{- $generated := dict -}}
{{- if and .Values.tests.generateCredentials (include "interop.testsActive" .) -}}
{{- $generated = include "interop.generatedTestTokens" . | fromYaml -}}
{{- end -}}
{{- $homeSeen := false -}}
# Rendered by the interop chart from providers.registry.
{{- range .Values.providers.registry }}
{{- if and $generated.sender (eq .id $root.Values.tests.senderProvider) }}
{{- fail (printf "tests.generateCredentials: providers.registry already has a provider %q; choose another tests.senderProvider" .id) }}
{{- end }}
{{- $hashes := default list .tokenSha256 }}
{{- if and $generated.recipient (eq .id "home") }}
{{- $homeSeen = true }}
{{- $hashes = append $hashes ($generated.recipient | sha256sum) }}
{{- end }}

[[providers]]
id = {{ .id | quote }}
display_name = {{ .displayName | quote }}
privacy_policy_url = {{ default "" .privacyPolicyUrl | quote }}
encryption = {{ .encryption | quote }}
token_sha256 = [{{ range $i, $h := $hashes }}{{ if $i }}, {{ end }}{{ $h | quote }}{{ end }}]
{{- with .clientCertSha256 }}
client_cert_sha256 = [{{ range $i, $h := . }}{{ if $i }}, {{ end }}{{ $h | lower | quote }}{{ end }}]
{{- end }}
{{- if .requireClientCert }}
require_client_cert = true
{{- end }}
{{- with .capabilities }}

[providers.capabilities]
{{- if hasKey . "content" }}
content = [{{ range $i, $k := .content }}{{ if $i }}, {{ end }}{{ $k | quote }}{{ end }}]
{{- end }}
{{- if hasKey . "mediaFormats" }}
media_formats = [{{ range $i, $f := .mediaFormats }}{{ if $i }}, {{ end }}{{ $f | quote }}{{ end }}]
{{- end }}
{{- end }}
{{- end }}
{{- if $generated.sender }}
{{- if not $homeSeen }}
{{- fail "tests.generateCredentials needs a provider with id \"home\" in providers.registry (the test recipient is a home user)" }}
{{- end }}

# helm test sender (tests.generateCredentials)
[[providers]]
id = {{ .Values.tests.senderProvider | quote }}
display_name = "helm test"
privacy_policy_url = ""
encryption = "transport-only"
token_sha256 = [{{ $generated.sender | sha256sum | quote }}]
{{- end }}
{{- end -}}

{{/* Volume mounts of a service container: (dict "root" $ "component" name "c" componentInfo "v" values) */}}
{{- define "interop.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- include "interop.natsVolumeMounts" .root }}
{{- include "interop.redisVolumeMounts" .root }}
{{- include "interop.otelVolumeMounts" .root }}
{{- if .c.providers }}
- name: providers
  mountPath: /etc/interop/providers
  readOnly: true
{{- end }}
{{- if and .c.edge .root.Values.tls.existingSecret }}
- name: tls
  mountPath: /etc/interop/tls
  readOnly: true
{{- if .root.Values.tls.clientCa.existingSecret }}
- name: client-ca
  mountPath: /etc/interop/client-ca
  readOnly: true
{{- end }}
{{- end }}
{{- if and (eq .component "ingest") .v.adminApi.enabled }}
- name: admin-api
  mountPath: /etc/interop/admin-api
  readOnly: true
{{- end }}
{{- if and (eq .component "ingest") .v.keyTransparency.enabled }}
- name: key-transparency
  mountPath: /etc/interop/key-transparency
  readOnly: true
{{- end }}
{{- if and (eq .component "spam-scoring") .v.policy }}
- name: spam-policy
  mountPath: /etc/interop/spam-policy
  readOnly: true
{{- end }}
{{- with .v.extraVolumeMounts }}
{{ tpl (toYaml .) $.root }}
{{- end }}
{{- end -}}

{{/* Volumes of a service pod beyond /tmp: (dict "root" $ "component" name "c" componentInfo "v" values) */}}
{{- define "interop.volumes" -}}
{{- include "interop.natsVolumes" .root }}
{{- include "interop.redisVolumes" .root }}
{{- include "interop.otelVolumes" .root }}
{{- if .c.providers }}
- name: providers
  secret:
    secretName: {{ include "interop.providersSecretName" .root }}
    defaultMode: 0440
    items:
      - key: {{ include "interop.providersSecretKey" .root }}
        path: providers.toml
{{- end }}
{{- if and .c.edge .root.Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .root.Values.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- if .root.Values.tls.clientCa.existingSecret }}
- name: client-ca
  secret:
    secretName: {{ .root.Values.tls.clientCa.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .root.Values.tls.clientCa.existingSecretKey }}
        path: ca.crt
{{- end }}
{{- end }}
{{- if and (eq .component "ingest") .v.adminApi.enabled }}
- name: admin-api
  secret:
    secretName: {{ required "ingest.adminApi.existingSecret (a Secret holding the admin API's bearer token) is required when ingest.adminApi.enabled is true" .v.adminApi.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .v.adminApi.existingSecretKey }}
        path: admin-token
{{- end }}
{{- if and (eq .component "ingest") .v.keyTransparency.enabled }}
- name: key-transparency
  secret:
    secretName: {{ required "ingest.keyTransparency.existingSecret (a Secret holding the directory's VRF key, 64 hex digits) is required when ingest.keyTransparency.enabled is true" .v.keyTransparency.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .v.keyTransparency.existingSecretKey }}
        path: vrf-key
{{- end }}
{{- if and (eq .component "spam-scoring") .v.policy }}
- name: spam-policy
  configMap:
    name: {{ include "interop.fullname" .root }}-spam-policy
    items:
      - key: policy.toml
        path: policy.toml
{{- end }}
{{- with .v.extraVolumes }}
{{ tpl (toYaml .) $.root }}
{{- end }}
{{- end -}}

{{- define "interop.ingestUrl" -}}
{{- printf "ws://%s.%s.svc:%d/v1/ws" (include "interop.componentName" (dict "root" . "component" "ingest")) .Release.Namespace (int .Values.ingest.service.port) -}}
{{- end -}}

{{- define "interop.deliveryUrl" -}}
{{- printf "ws://%s.%s.svc:%d/v1/ws" (include "interop.componentName" (dict "root" . "component" "delivery")) .Release.Namespace (int .Values.delivery.service.port) -}}
{{- end -}}
