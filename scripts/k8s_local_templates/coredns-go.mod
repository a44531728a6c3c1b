module kchat.local/coredns

go 1.25.0

require github.com/coredns/coredns v$coredns_version
