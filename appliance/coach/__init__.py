"""The coach: programme data, breath pacing and the session state machine."""
