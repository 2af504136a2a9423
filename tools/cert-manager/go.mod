// cert-manager at a pinned release: only its CRD manifests are used (deploy/crds), by the e2e
// tier, so that the Certificates the operator writes are checked against the real schema.
module edgeadapt.io/tools/cert-manager

go 1.24.0

require github.com/cert-manager/cert-manager v1.16.2
