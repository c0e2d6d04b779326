{{/*
The name of every object: the release's name (install the chart as release "headcni").
*/}}
{{- define "headcni.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "headcni.serviceAccountName" -}}
{{- default (include "headcni.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Labels on every object; the selector uses app.kubernetes.io/name only. */}}
{{- define "headcni.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "headcni.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
{{- end -}}

{{- define "headcni.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
One TOML value from a values value: a string (JSON string escapes are TOML basic-string
escapes), a boolean, an integer (values given as JSON numbers arrive as float64), a list (an
inline array) or a map (an inline table, keys sorted and quoted).
*/}}
{{- define "headcni.toml" -}}
{{- $k := kindOf . -}}
{{- if eq $k "string" -}}
{{ toJson . }}
{{- else if eq $k "bool" -}}
{{ ternary "true" "false" . }}
{{- else if or (eq $k "float64") (eq $k "float32") -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if hasPrefix "int" $k -}}
{{ . }}
{{- else if eq $k "slice" -}}
[{{- range $i, $v := . -}}{{ if $i }}, {{ end }}{{ include "headcni.toml" $v }}{{- end -}}]
{{- else if eq $k "map" -}}
{ {{- range $i, $key := keys . | sortAlpha -}}{{ if $i }},{{ end }} {{ toJson $key }} = {{ include "headcni.toml" (get $ $key) }}{{- end }} }
{{- else -}}
{{ fail (printf "headcni: cannot write a %s as TOML" $k) }}
{{- end -}}
{{- end -}}

{{/*
`key = value` lines of a map, keys sorted, null values skipped (the daemon's default applies).
*/}}
{{- define "headcni.tomlKeys" -}}
{{- $lines := list -}}
{{- range $key := keys . | sortAlpha -}}
{{- $v := get $ $key -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $lines = append $lines (printf "%s = %s" $key (include "headcni.toml" $v)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/* The effective LocalAPI socket: config.tailscale.socket, else the mode's default. */}}
{{- define "headcni.tailscaleSocket" -}}
{{- if .Values.config.tailscale.socket -}}
{{ .Values.config.tailscale.socket }}
{{- else if eq .Values.mode "daemon" -}}
/run/headcni/tailscaled.sock
{{- else -}}
/var/run/tailscale/tailscaled.sock
{{- end -}}
{{- end -}}

{{/* The port of config.daemon.listen ("ADDR:PORT" or "[V6]:PORT"). */}}
{{- define "headcni.listenPort" -}}
{{- regexReplaceAll "^.*:" .Values.config.daemon.listen "" -}}
{{- end -}}

{{/* Where the kubelet probes: the listen address; a wildcard is probed on loopback. */}}
{{- define "headcni.probeHost" -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.config.daemon.listen "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if eq $host "0.0.0.0" -}}127.0.0.1{{- else if eq $host "::" -}}::1{{- else -}}{{ $host }}{{- end -}}
{{- end -}}

{{- define "headcni.apiKeyFile" -}}
/etc/headcni-secret/{{ .Values.apiKey.key }}
{{- end -}}

{{- define "headcni.oauthFile" -}}
/etc/headcni-oauth/{{ .Values.tailscaleApi.oauthSecret.key }}
{{- end -}}

{{/* Whether the daemon needs the Headscale API key: approval = api, or daemon mode's login. */}}
{{- define "headcni.needsApiKey" -}}
{{- if or (eq .Values.approval "api") (eq .Values.mode "daemon") -}}true{{- end -}}
{{- end -}}
