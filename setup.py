"""The packages of the one import namespace `distill`: the design's top-level folders mapped under it, and every
package inside them found rather than listed, so that a new teacher family (a package under teachers/) or recipe
adds no line to the build (pyproject.toml holds everything else)."""

from setuptools import find_packages, setup

FOLDERS = {"distill": "distill", "distill.teachers": "teachers", "distill.students": "students", "distill.eval": "eval"}

packages = []
for package, folder in FOLDERS.items():
    packages += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]

setup(packages=packages, package_dir=FOLDERS)
