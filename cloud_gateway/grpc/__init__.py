"""gRPC transport of the gateway: servicers and converters."""
