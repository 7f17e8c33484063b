"""State estimation: WLS on power-grid-model with bad-data detection and pseudo-measurements."""
