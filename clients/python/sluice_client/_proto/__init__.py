"""Python stubs generated from the repository's proto/ when the package is built.

Only this file is committed; sluice/v1/generation_pb2.py, generation_pb2_grpc.py and their
.pyi files are written by setup.py's build_py step with grpc_tools.protoc.
"""
