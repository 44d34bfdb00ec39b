"""The frontend's decisions and vocabulary: coding groups and their actions, placement, admission,
deadlines, latency windows, routes, the types a Triton call and a coding call are described by. Imports no
gRPC, tritonclient or Prometheus (tests/unit/test_layers.py holds it to that)."""
