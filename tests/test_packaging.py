"""An installed copy (`pip install .`, not only `-e .`) has every file the code reads from its
packages: setup.cfg's package_data names each file of gen/, train/ and analyze/ that is not Python."""

import configparser
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gen", "train", "analyze")


def package_data() -> dict[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    section = config["options.package_data"] if config.has_section("options.package_data") else {}
    return {package: patterns.split() for package, patterns in section.items()}


def test_every_file_the_packages_hold_besides_python_is_installed():
    patterns = package_data()
    data = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*"))
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts]
    assert any(p.parent.name == "recipes" for p in data) and any(p.parent.name == "static" for p in data)  # what gpu-job and serve read
    left_out = []
    for path in data:
        package, *inside = path.relative_to(ROOT).parts  # setuptools matches a package's patterns against paths inside it
        if not any(fnmatch.fnmatch("/".join(inside), pattern) for pattern in patterns.get(package, [])):
            left_out.append(path.relative_to(ROOT).as_posix())
    assert left_out == [], f"add these to [options.package_data] in setup.cfg: {left_out}"
