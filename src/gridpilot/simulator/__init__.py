"""The digital twin: quasi-static time-series power flow with virtual field devices."""
