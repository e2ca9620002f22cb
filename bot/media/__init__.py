"""Media: one wall-clock timeline for every track, composed, mixed and written as fMP4."""
