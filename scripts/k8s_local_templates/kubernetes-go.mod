module kchat.local/k8s-build

go $go_line

require k8s.io/kubernetes v$k8s_version

replace (
$replaces
)
