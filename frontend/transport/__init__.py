"""The wires: the Triton client (one pool of instances), the coding clients, DNS discovery of instances,
long-lived gRPC streams, and the catalog of what Triton says each model is."""
