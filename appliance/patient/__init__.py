"""The patient's plan: the prescription, what may be trained today, progress, reminders."""
