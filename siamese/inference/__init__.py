"""The model folder as the app, export and evaluation load it: the encoder, its post-processing, the ONNX
backend and export, the NLI label names, the model card. Imports nothing from training or evaluation."""
