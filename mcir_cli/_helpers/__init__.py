"""Private helpers every layer uses: atomic file writes and output checks (`fsutil`),
the one JSON writer and the one progress-bar factory. Nothing here knows about images or models."""
