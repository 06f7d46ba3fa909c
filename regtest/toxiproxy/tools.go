//go:build tools

// Package tools records the binary P2PEP builds from the pinned Toxiproxy module so that
// `go mod tidy` keeps it (and everything it needs) in go.sum.
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2/cmd/server"
)
