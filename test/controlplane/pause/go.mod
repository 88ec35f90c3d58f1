// The sandbox ("pause") process of the test node's pods: a static program that holds the pod's
// namespaces and reaps orphans until it is told to stop. Built locally: no registry here.
module podnet.local/controlplane/pause

go 1.26.0
