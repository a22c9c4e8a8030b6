"""A user's helper package, imported by mirrored_handler.py inside the archive."""
