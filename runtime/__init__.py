"""snuc.runtime."""
