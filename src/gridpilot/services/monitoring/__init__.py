"""Monitoring: limit checks on every estimate, alarms with raise/clear/acknowledge."""
