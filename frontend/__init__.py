"""snuc.frontend."""
