"""ONNX -> Sparrow compiler."""
