"""Images and datasets, in the order they are read: decoding (`imageio`), the published
folder layouts (`layouts/`), pairing and training patches (`datasets`), resizing, degradations."""
