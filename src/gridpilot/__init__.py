"""GridPilot: an open, service-oriented Distribution Management System on a NATS backbone."""

__version__ = "0.1.0"
