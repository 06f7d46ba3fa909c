// Only for `go build` of cmd/kube-apiserver (scripts/build-kube-apiserver.sh): nothing imports this.

//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
