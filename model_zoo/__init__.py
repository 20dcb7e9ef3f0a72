"""The model zoo: pretrained ONNX classifiers, their manifest and example photos (`onnxsal.model_zoo`)."""
