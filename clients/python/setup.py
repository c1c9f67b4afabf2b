"""Build steps of sluice-client that pyproject.toml cannot express.

build_py runs grpc_tools.protoc over the repository's proto/ (../../proto from here, or
the copy an sdist carries) and writes the Python stubs into sluice_client/_proto/ of the
build: sluice/v1/generation_pb2.py, generation_pb2_grpc.py and .pyi files. Nothing
generated is committed, and nothing generated is edited by hand: the only rewrite is the
mechanical one below, which makes protoc's absolute imports between generated modules
(`from sluice.v1 import generation_pb2`) point inside this package, so that installing
sluice-client does not claim a top-level `sluice` package.
"""

import glob
import os
import re
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "sluice_client"
STUB_PACKAGE = f"{PACKAGE}._proto"


def proto_root():
    """The directory whose *.proto files are compiled (import paths are relative to it)."""
    if os.path.exists(os.path.join(HERE, "PKG-INFO")):  # an unpacked sdist carries its copy
        candidates = [os.path.join(HERE, "proto")]
    else:
        candidates = [os.path.join(HERE, "..", "..", "proto")]
    for root in candidates:
        if glob.glob(os.path.join(root, "**", "*.proto"), recursive=True):
            return os.path.normpath(root)
    raise SystemExit(
        f"sluice-client: no .proto files under {candidates[0]}: build from the sluice repository "
        "(pip install ./clients/python) or from an sdist made there; a pip older than 21.3 copies "
        "the directory elsewhere first and loses ../../proto")


def proto_files(root):
    return sorted(glob.glob(os.path.join(root, "**", "*.proto"), recursive=True))


def generate_stubs(out_dir):
    """protoc --python_out --pyi_out --grpc_python_out into out_dir (keeps its __init__.py)."""
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    files = proto_files(root)
    os.makedirs(out_dir, exist_ok=True)
    for entry in os.listdir(out_dir):  # stale stubs of a removed .proto must not linger
        path = os.path.join(out_dir, entry)
        if entry != "__init__.py":
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["grpc_tools.protoc", f"-I{root}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise SystemExit(f"sluice-client: grpc_tools.protoc failed on {files}")

    # Every generated directory is a package, and imports between generated modules are
    # made absolute within sluice_client._proto.
    top = sorted(e for e in os.listdir(out_dir) if os.path.isdir(os.path.join(out_dir, e)))
    pattern = re.compile(r"^(from|import) (%s)((?:\.\w+)*)\b" % "|".join(map(re.escape, top)), re.MULTILINE)
    for dirpath, _, filenames in os.walk(out_dir):
        if dirpath != out_dir and "__init__.py" not in filenames:
            with open(os.path.join(dirpath, "__init__.py"), "w") as f:
                f.write("# Generated package of sluice-client's stubs.\n")
        for name in filenames:
            if not name.endswith((".py", ".pyi")) or name == "__init__.py":
                continue
            path = os.path.join(dirpath, name)
            with open(path) as f:
                text = f.read()
            fixed = pattern.sub(lambda m: f"{m.group(1)} {STUB_PACKAGE}.{m.group(2)}{m.group(3)}", text)
            if fixed != text:
                with open(path, "w") as f:
                    f.write(fixed)
    return [os.path.relpath(f, root) for f in files]


class build_py(_build_py):
    """The usual build_py, then the stubs generated into the build (or, for an editable
    install, into the source tree, where .gitignore keeps them out of git)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            out_dir = os.path.join(HERE, *STUB_PACKAGE.split("."))
        else:
            out_dir = os.path.join(self.build_lib, *STUB_PACKAGE.split("."))
        compiled = generate_stubs(out_dir)
        self.announce(f"sluice-client: generated stubs of {', '.join(compiled)} into {out_dir}", level=2)


class sdist(_sdist):
    """An sdist carries a copy of proto/, so a wheel can be built from it anywhere."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = proto_root()
        for path in proto_files(root):
            dest = os.path.join(base_dir, "proto", os.path.relpath(path, root))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(path, dest)


setup(cmdclass={"build_py": build_py, "sdist": sdist})
