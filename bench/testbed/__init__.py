"""python -m bench.testbed: the papers' cluster layouts on one machine, with emulated accelerator time.

Each Triton instance of a paper's cluster is a tritonserver process of its own (a SIGSTOP stalls exactly one
instance), whose backend holds the instance for a time drawn from an emulated service-time law, so requests
queue at a busy instance as they would at an accelerator. Profiles (:mod:`bench.testbed.profiles`): ParM's
12 deployed instances plus 6 parity instances against equal resources, full replication and hedging;
Collage-CNN's s = 2 and 3 with its resend fallback under its own published law; ApproxIFER's K = 8 and 12
with S = 1 and 2. Every scheme of a profile runs in one interleaved run, on the same arrivals and the same
per-instance stall schedule (or ParM's background shuffles, every instance in a network namespace:
``--faults shuffles|both``); the run records the machine's CPU share and every instance's utilisation, and
flags a run the two cores rather than the instances may have limited (:mod:`bench.testbed.measure`).
"""
