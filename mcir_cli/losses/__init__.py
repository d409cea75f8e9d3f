"""Losses of a run: reconstruction losses (`reconstruction`), the SPN embeddings (`embeddings`:
VGG16/VGG19/pixel) and the SPN loss that pushes the output away from the negatives' outputs (`spn`)."""
