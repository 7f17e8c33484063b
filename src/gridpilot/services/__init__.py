"""Real-time applications, each runnable as its own process (``gridpilot run SERVICE``)."""
