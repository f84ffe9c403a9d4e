"""The device on a simulated clock: one session, or a lending period of N days."""
