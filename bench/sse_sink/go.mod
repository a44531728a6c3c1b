module kchat/bench/sse_sink

go 1.21
