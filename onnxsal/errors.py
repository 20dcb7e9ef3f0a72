"""Errors a user can act on.

Every error raised for bad input derives from OnnxsalError; its message is one line that says what is
wrong and what to do. The CLI prints it as is, without a traceback, and exits non-zero.
"""


class OnnxsalError(Exception):
    """Bad input, an unsupported model, or a request that does not apply."""


class ModelError(OnnxsalError):
    """The model file is missing, corrupt, not ONNX, or has no usable image input or output."""


class UnsupportedOpError(OnnxsalError):
    """An op on the gradient path has no backward rule (or a form of it that onnxsal cannot differentiate)."""


class LayerError(OnnxsalError):
    """An unknown layer name, or a layer that cannot be used (wrong rank, not on the path to the output)."""


class TargetError(OnnxsalError):
    """A class index out of range, an unknown class name, or weights of the wrong shape."""


class InputError(OnnxsalError):
    """An input batch or image that does not fit the model, or a file that is not an image."""


class MethodError(OnnxsalError):
    """An unknown method or option, or a method that does not apply to this model."""
