"""LUKHAS Context: state."""
