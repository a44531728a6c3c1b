"""kchat's test kit: what the tests (through thin pytest fixtures in tests/support/), the chaos run and the
benchmarks share. Not part of the service (the image leaves it out).

  procs   ports, process state, CPU and memory readers
  kafka   KafkaCluster around scripts/kafka-local; TopicCommand describe parsing
  worker  one `faust -A kchat_faust worker` process: start, stop, kill, pause, restart
  sse     the one resuming SSE subscriber, recording events and (re)connects
  chat    posting and reading counts over HTTP
  chaos   the chaos run (bench/chaos.py, tests/test_chaos.py) and its checks
  history the fault suite's recorder and checker
  faults  the fault suite's runner (bench/faults.py, tests/test_faults.py); beside it faults_env (the cluster,
          the workers, the Kafka settings), faults_scenarios (the faults and SCENARIOS, how long each is held),
          faults_report (what a run prints and writes)
"""
