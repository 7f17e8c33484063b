"""Gateways: the I/O around the protocol codecs, between field devices and the bus."""
