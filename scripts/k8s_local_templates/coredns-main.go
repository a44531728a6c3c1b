// CoreDNS with a chosen set of plugins (written by scripts/k8s-local).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
$imports
)

func init() {
	dnsserver.Directives = []string{$directives}
}

func main() {
	coremain.Run()
}
