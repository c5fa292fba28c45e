"""python -m protos: generate the protobuf code now (Docker builds run this)."""
from . import pb2

print(f"generated {pb2.__file__}")
