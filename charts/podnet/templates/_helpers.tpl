{{/*
The objects of the repository's own manifests (files/ links to config/ and eventing/): one map
per YAML document, so that Helm and kustomize install exactly the same objects.
Call with (dict "root" $ "files" (list ...)); returns them as JSON.
*/}}
{{- define "podnet.docs" -}}
{{- $docs := list -}}
{{- range $file := .files -}}
{{- range $text := splitList "\n---\n" ($.root.Files.Get $file) -}}
{{- $doc := fromYaml $text -}}
{{- if $doc.kind -}}{{- $docs = append $docs $doc -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $docs -}}
{{- end -}}

{{/* Set an env var's value in a container (the entry must exist). */}}
{{- define "podnet.setEnv" -}}
{{- range $e := .container.env -}}
{{- if eq $e.name $.name -}}{{- $_ := set $e "value" $.value -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* The labels every object of the release carries (Helm's and Kubernetes' recommended ones). */}}
{{- define "podnet.labels" -}}
app.kubernetes.io/name: podnet
app.kubernetes.io/part-of: podnet
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}
