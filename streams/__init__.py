"""LUKHAS Context: streams."""
