"""The gRPC edge (kakeya.v1): the only importer of the generated protobuf modules."""
