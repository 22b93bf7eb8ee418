"""runners/Dockerfile: base image versions and project install."""

import ast
import os
import re

import apache_beam

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO_ROOT, "runners", "Dockerfile")


def _instructions():
    """Return (instruction, arguments) pairs, with continuation lines joined."""
    with open(DOCKERFILE) as dockerfile:
        text = dockerfile.read().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def _build_args():
    return dict(
        arguments.split("=", 1)
        for instruction, arguments in _instructions()
        if instruction == "ARG" and "=" in arguments)


def _base_image():
    images = [arguments for instruction, arguments in _instructions()
              if instruction == "FROM"]
    assert len(images) == 1, f"expected one FROM, got {images}"
    image = images[0]
    for name, value in _build_args().items():
        image = image.replace("${" + name + "}", value)
    return image


def _setup_py_constants():
    with open(os.path.join(REPO_ROOT, "setup.py")) as source:
        tree = ast.parse(source.read())
    constants = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value,
                                                       ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            constants["python_requires"] = node.value.value
    return constants


def test_base_image_is_beam_python_sdk():
    assert re.fullmatch(r"apache/beam_python3\.\d+_sdk:\d+\.\d+\.\d+",
                        _base_image())


def test_base_image_beam_version_matches():
    beam_version = _base_image().split(":")[1]

    assert beam_version == _setup_py_constants()["BEAM_VERSION"]
    assert beam_version == apache_beam.__version__


def test_base_image_python_satisfies_setup():
    python_version = re.search(r"beam_python(\d+)\.(\d+)_sdk", _base_image())
    minimum = re.fullmatch(r">=(\d+)\.(\d+)",
                           _setup_py_constants()["python_requires"])

    assert minimum, "python_requires is expected in the form '>=X.Y'"
    image_python = tuple(int(part) for part in python_version.groups())
    assert image_python >= tuple(int(part) for part in minimum.groups())


def test_installs_project_from_setup_py():
    copied = [arguments.split()[0] for instruction, arguments in _instructions()
              if instruction == "COPY"]
    runs = [arguments for instruction, arguments in _instructions()
            if instruction == "RUN"]

    assert "setup.py" in copied
    for package in ("pipelines", "transforms", "ml", "runners"):
        assert package in copied, f"{package} is not copied into the image"
    assert any(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", run)
               for run in runs)


def test_keeps_beam_entrypoint():
    instructions = [instruction for instruction, _ in _instructions()]

    assert "ENTRYPOINT" not in instructions
    assert "CMD" not in instructions
