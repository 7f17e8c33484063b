"""Core library shared by every service: schemas, subjects, bus helpers, service base."""
