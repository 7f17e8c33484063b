"""IEC 60870-5-104: codec, session, master and virtual RTU, and interoperability with c104."""
