"""Field protocols as sans-IO libraries: bytes in, typed frames out, and back (no sockets)."""
