//go:build tools

// Package conformance pins what the Kubernetes conformance run needs at the version Veil runs:
// the e2e test binary, the ginkgo runner that drives it in parallel, and agnhost, the test
// workload most conformance tests start. build.sh builds them; nothing here is part of Veil.
package conformance

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
