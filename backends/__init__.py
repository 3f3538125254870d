"""snuc.backends."""
