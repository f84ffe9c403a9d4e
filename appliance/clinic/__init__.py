"""The clinic: enrolment and wipe, the physiotherapist's report, the USB stick."""
