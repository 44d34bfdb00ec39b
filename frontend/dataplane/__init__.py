"""The data path under both protocols: the coordinator (a coding group's actions -> I/O -> events), batching,
dispatch (the uncoded baselines), fault injection around a pool, the query metrics. Calls Triton and the
coding services only through the core's Pool and Coder interfaces."""
