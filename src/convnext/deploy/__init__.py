"""Taking a trained model out: exports (ONNX, TorchScript, torch.export, safetensors), INT8, benchmarks."""
