//go:build tools

// Package tools records the binaries P2PEP builds from pinned modules so that
// `go mod tidy` keeps them (and everything they need) in go.sum.
package tools

import (
	_ "github.com/btcsuite/btcd"
	_ "github.com/btcsuite/btcd/cmd/btcctl"
	_ "github.com/lightningnetwork/lnd/cmd/lnd"
	_ "github.com/lightningnetwork/lnd/cmd/lncli"
)
