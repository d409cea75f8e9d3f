"""Private helpers every layer uses: atomic file writes, sha256 and output checks (`fsutil`).
Nothing here knows about images or models."""
