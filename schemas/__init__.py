"""Avro schemas of LUKHAS Context, the event model and the single-object codec."""
