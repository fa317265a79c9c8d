from setuptools import setup

setup(name="hello-agent", version="1.0.0", packages=["src"], package_dir={"": "."}, install_requires=[])
