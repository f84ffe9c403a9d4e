"""Pressure sensing: the probe's pressure in cmH2O from a real ADC or a simulated pelvic floor."""
