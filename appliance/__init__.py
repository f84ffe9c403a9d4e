"""Voice-guided pelvic-floor home trainer.

The package runs identically on a Raspberry Pi and in simulation; see DESIGN.md.
"""

__version__ = "0.1.0"
