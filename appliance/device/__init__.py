"""The device: supervisor, edges (real and simulated), session wiring, health, service, controls."""
