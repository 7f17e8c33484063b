"""The MQTT gateway: smart meters publish on the broker's MQTT listener (``gp/<grid>/meter/<id>``),
this gateway normalises what they send into measurement sets on ``gp.<grid>.meas.<id>``."""
