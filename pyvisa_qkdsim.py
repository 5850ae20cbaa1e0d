"""PyVISA backend module: ``pyvisa.ResourceManager("@qkdsim")`` opens the emulated bench.

PyVISA imports ``pyvisa_<name>`` for a ``@<name>`` backend and uses its ``WRAPPER_CLASS``;
the implementation lives in :mod:`emulator.backend`.
"""

from emulator.backend import QkdSimVisaLibrary

WRAPPER_CLASS = QkdSimVisaLibrary

__all__ = ["WRAPPER_CLASS"]
