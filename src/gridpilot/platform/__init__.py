"""The platform under the services: the embedded NATS broker, its identities and permissions."""
