"""Runtime/driver: one Device API over the golden model and the simulated RTL."""
