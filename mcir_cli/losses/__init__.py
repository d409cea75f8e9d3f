"""Losses of a run (`spn`): reconstruction losses, the SPN embeddings (VGG16/VGG19/pixel)
and the SPN loss that pushes the output away from the negatives' outputs."""
