"""LUKHAS Context: processors."""
