"""Train, calibrate and export SEENN spiking neural networks as ONNX model packages."""

__version__ = "0.1.0"
