"""Local stand-ins for the recorder's surroundings: SFU, participants, S3, demo."""
