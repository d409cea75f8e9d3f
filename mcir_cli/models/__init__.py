"""Networks: checkpoints read and written, presets and their recipes, the paper's figures,
loading into a `LoadedModel`, tiled inference, ONNX/TorchScript export, extra architectures."""
