"""snuc: compile spiking-neural-unit networks for simulated phase-change-memory chips."""

from snuc.ir.errors import SnucError

__version__ = "0.1.0"

__all__ = ["SnucError", "__version__"]
