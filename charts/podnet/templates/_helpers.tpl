{{/*
The objects of the repository's own manifests (files/ links to config/ and eventing/): one map
per YAML document, so that Helm and kustomize install exactly the same objects.
Call with (dict "root" $ "files" (list ...)); returns them as JSON.
*/}}
{{- define "podnet.docs" -}}
{{- $docs := list -}}
{{- range $file := .files -}}
{{- /* The manifests' namespace, podnet-system, wherever it is named (metadata, RBAC subjects,
the admission policies' ServiceAccount names, the audiences, the function's environment), is
the release's. */ -}}
{{- $manifest := regexReplaceAll "\\bpodnet-system\\b" ($.root.Files.Get $file) $.root.Release.Namespace -}}
{{- range $text := splitList "\n---\n" $manifest -}}
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

{{/* An image reference from (repository, tag, digest): the tag defaults to the chart's appVersion. */}}
{{- define "podnet.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- printf "%s:%s" .image.repository $tag -}}{{- with .image.digest -}}@{{ . }}{{- end -}}
{{- end -}}

{{/*
A pod template's container and spec given the install's image values: (dict "root" $ "pod" <pod
spec> "container" <container> "image" <image values>). Pull policy and pull secrets only when set.
*/}}
{{- define "podnet.setImage" -}}
{{- $v := .root.Values.images -}}
{{- $_ := set .container "image" (include "podnet.image" (dict "root" .root "image" .image)) -}}
{{- with $v.pullPolicy }}{{ $_ := set $.container "imagePullPolicy" . }}{{ end -}}
{{- with $v.pullSecrets }}{{ $_ := set $.pod "imagePullSecrets" . }}{{ end -}}
{{- end -}}

{{/*
Scheduling and resources from values onto a pod template: (dict "pod" <template> "values"
<values with resources, nodeSelector, tolerations, affinity, priorityClassName, podLabels,
podAnnotations; each optional>). Empty values keep the manifest's; node selectors merge onto
the manifest's; the manifest's labels win (selectors need them), given annotations win.
*/}}
{{- define "podnet.setPod" -}}
{{- $spec := .pod.spec -}}
{{- $c := index $spec.containers 0 -}}
{{- $v := .values -}}
{{- with $v.resources }}{{ $_ := set $c "resources" . }}{{ end -}}
{{- with $v.nodeSelector }}{{ $_ := set $spec "nodeSelector" (merge (dict) . (default (dict) $spec.nodeSelector)) }}{{ end -}}
{{- with $v.tolerations }}{{ $_ := set $spec "tolerations" . }}{{ end -}}
{{- with $v.affinity }}{{ $_ := set $spec "affinity" . }}{{ end -}}
{{- with $v.priorityClassName }}{{ $_ := set $spec "priorityClassName" . }}{{ end -}}
{{- with $v.podLabels }}{{ $_ := set $.pod.metadata "labels" (merge (dict) (default (dict) $.pod.metadata.labels) .) }}{{ end -}}
{{- with $v.podAnnotations }}{{ $_ := set $.pod.metadata "annotations" (merge (dict) . (default (dict) $.pod.metadata.annotations)) }}{{ end -}}
{{- end -}}

{{/*
The spec of a hook Job that runs one `pnc` command in the node-runner image (its entrypoint is
`node dist/cli/pnc.js`) as its ServiceAccount podnet-<component>: non-root, no capabilities, a
read-only root and a 1 MiB memory /tmp (openssl, for the keys). Scheduling and resources from
the keys.* values. Call with (dict "root" $ "component" "keys" "args" (list ...)); one line of JSON.
*/}}
{{- define "podnet.hookJobSpec" -}}
{{- $v := .root.Values -}}
{{- $container := dict
  "name" .component
  "image" (include "podnet.image" (dict "root" .root "image" $v.images.nodeRunner))
  "args" .args
  "env" (list (dict "name" "TMPDIR" "value" "/tmp"))
  "resources" ($v.keys.resources | default (dict "requests" (dict "cpu" "50m" "memory" "96Mi") "limits" (dict "memory" "192Mi")))
  "securityContext" (dict "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "capabilities" (dict "drop" (list "ALL")))
  "volumeMounts" (list (dict "name" "tmp" "mountPath" "/tmp")) -}}
{{- with $v.images.pullPolicy }}{{ $_ := set $container "imagePullPolicy" . }}{{ end -}}
{{- $pod := dict
  "serviceAccountName" (printf "podnet-%s" .component)
  "restartPolicy" "Never"
  "nodeSelector" (merge (dict) $v.keys.nodeSelector (dict "kubernetes.io/os" "linux"))
  "securityContext" (dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "seccompProfile" (dict "type" "RuntimeDefault"))
  "containers" (list $container)
  "volumes" (list (dict "name" "tmp" "emptyDir" (dict "medium" "Memory" "sizeLimit" "1Mi"))) -}}
{{- with $v.keys.tolerations }}{{ $_ := set $pod "tolerations" . }}{{ end -}}
{{- with $v.images.pullSecrets }}{{ $_ := set $pod "imagePullSecrets" . }}{{ end -}}
{{- toJson (dict
  "backoffLimit" (ternary .backoffLimit 3 (hasKey . "backoffLimit"))
  "activeDeadlineSeconds" 300
  "template" (dict "metadata" (dict "labels" (dict "app.kubernetes.io/part-of" "podnet" "app.kubernetes.io/component" .component)) "spec" $pod)) -}}
{{- end -}}

{{/*
A ServiceAccount of the release's namespace with a Role and its RoleBinding (the chart's Jobs):
(dict "root" $ "name" <ServiceAccount and Role name> "namespace" <the Role's, default the release's>
"rules" <the rules, YAML text> "annotations" <dict, e.g. a hook's> "serviceAccount" <false: the
ServiceAccount is rendered elsewhere>).
*/}}
{{- define "podnet.jobRbac" -}}
{{- $release := .root.Release.Namespace -}}
{{- $meta := dict "labels" (include "podnet.labels" .root | fromYaml) -}}
{{- with .annotations }}{{ $_ := set $meta "annotations" . }}{{ end -}}
{{- $roleMeta := merge (dict "name" .name "namespace" (default $release .namespace)) $meta -}}
{{- if ne .serviceAccount false }}
{{ toJson (dict "apiVersion" "v1" "kind" "ServiceAccount" "metadata" (merge (dict "name" .name "namespace" $release) $meta)) }}
---
{{- end }}
{{ toJson (dict "apiVersion" "rbac.authorization.k8s.io/v1" "kind" "Role" "metadata" $roleMeta "rules" (.rules | fromYamlArray)) }}
---
{{ toJson (dict "apiVersion" "rbac.authorization.k8s.io/v1" "kind" "RoleBinding" "metadata" $roleMeta
  "roleRef" (dict "apiGroup" "rbac.authorization.k8s.io" "kind" "Role" "name" .name)
  "subjects" (list (dict "kind" "ServiceAccount" "name" (default .name .subject) "namespace" $release))) }}
{{- end -}}
