"""Shared serving runtime used by both the edge agent and the cloud gateway.

Holds the v2 tensor codec, the ONNX Runtime model wrapper, the domain error
kinds, logging setup and the settings base. It imports none of the other
edgecloud packages apart from the generated ``protos``.
"""

__version__ = "0.1.0"
