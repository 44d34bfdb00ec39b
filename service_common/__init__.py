"""gRPC plumbing the three services share: tensor conversion, error mapping, server assembly."""
