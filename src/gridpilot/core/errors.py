"""GridPilot's exception tree; every error a user can cause says what was wrong and what to do.

GridPilotError
├── ConfigError            bad option, file or environment value
├── UnknownGridError       a grid name that no loader knows
├── ModelError             a grid model that cannot be converted or calculated
├── PayloadError           a message that does not decode into its schema
├── ProtocolError          a field-protocol frame or exchange is wrong
├── StoreError             the historian's database refused or cannot be reached
├── AuthError              not logged in, or the session token is no longer valid
└── BusError               the backbone refused or could not be reached
    └── PermissionDeniedError  a subject this service has no right to
"""

from __future__ import annotations


class GridPilotError(Exception):
    """Root of every error GridPilot raises on purpose."""


class ConfigError(GridPilotError):
    """A configuration value is wrong; the message says which and how to fix it."""


class UnknownGridError(GridPilotError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown grid {name!r}; use one of {', '.join(known)}, "
            "'simbench:<code>' or a path to a pandapower JSON file"
        )


class ModelError(GridPilotError):
    """The grid model cannot be built or calculated."""


class PayloadError(GridPilotError):
    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"bad payload on {subject}: {reason}")


class ProtocolError(GridPilotError):
    """A field-protocol frame or exchange is wrong; each protocol package subclasses it."""

    def __init__(self, protocol: str, reason: str, *, offset: int | None = None) -> None:
        self.protocol = protocol
        self.reason = reason
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{protocol}: {reason}{where}")


class StoreError(GridPilotError):
    """The database refused or could not be reached; the message says which and why."""


class AuthError(GridPilotError):
    """Not logged in, or the token is no longer valid (HTTP 401)."""


class BusError(GridPilotError):
    """The message backbone refused a request or cannot be reached."""


class PermissionDeniedError(BusError):
    def __init__(self, subject: str, operation: str) -> None:
        self.subject = subject
        self.operation = operation
        super().__init__(f"permission denied to {operation} on {subject!r}")
