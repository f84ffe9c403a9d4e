"""What the patient hears and says: speech, tone, mixer, listener, phrase catalogues."""
