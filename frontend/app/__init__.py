"""The application: its configuration, the assembly of the layers into one frontend, its gRPC servers,
health, and start-up."""
