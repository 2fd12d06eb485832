"""Generated protobuf and gRPC modules for the layercache.v1 API.

Do not edit: regenerate with ``python protos/generate.py``. They live in the
client package because the daemon and every client share this one contract.
"""
