"""kchat's test kit: what the tests (through thin pytest fixtures in tests/support/), the chaos run and the
benchmarks share. Not part of the service (the image leaves it out).

  procs   ports, process state, CPU and memory readers
  kafka   KafkaCluster around scripts/kafka-local; TopicCommand describe parsing
  worker  one `faust -A kchat_faust worker` process: start, stop, kill, pause, restart
  sse     the one resuming SSE subscriber, recording events and (re)connects
  chat    posting and reading counts over HTTP
  chaos   the chaos run (bench/chaos.py, tests/test_chaos.py) and its checks
"""
