//go:build tools

// Package conformance pins what the Kubernetes conformance run needs at the version Veil runs:
// the e2e test binary, the ginkgo runner that drives it in parallel, agnhost, the test workload
// most conformance tests start, nonewprivs (a setuid program reporting its effective user) and
// the sample API server the aggregator test registers.
// build.sh builds them; nothing here is part of Veil.
package conformance

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
	_ "k8s.io/kubernetes/test/images/nonewprivs"
	_ "k8s.io/sample-apiserver"
)
