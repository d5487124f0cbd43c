"""The exceptions the engine raises. Each carries the engine's own message."""


class ZhinaoError(Exception):
    """Base class of every error the zhinao engine raises."""


class InputError(ZhinaoError, ValueError):
    """Bad input: a text over the model's limit with truncation off, a prompt longer than the
    context, an empty text where tokens are needed, out-of-range sampling parameters."""


class ModelError(ZhinaoError, OSError):
    """The model directory is missing, incomplete, malformed or of another kind of model."""


class DeviceError(ZhinaoError, RuntimeError):
    """No GPU adapter, an adapter limit too small, or a device error while running."""
