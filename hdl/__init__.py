"""Sparrow RTL in Amaranth. One block (or tight family) per module, each a ``wiring.Component``."""
