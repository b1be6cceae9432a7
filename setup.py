"""Packaging in nbdev 2's convention: everything comes from settings.ini."""
from configparser import ConfigParser

from setuptools import find_packages, setup

settings = ConfigParser()
settings.read("settings.ini", encoding="utf-8")
cfg = settings["DEFAULT"]


def requirements(key):
    "A space-separated list from settings.ini."
    return cfg.get(key, "").split()


setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=cfg["license"],
    keywords=cfg["keywords"],
    url=cfg["git_url"],
    packages=find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    package_data={cfg["lib_path"]: ["assets/*"]},  # the text corpus ships inside the package, like the digits
    python_requires=">=" + cfg["min_python"],
    install_requires=requirements("requirements"),
    extras_require={
        # the tests exercise the server and build the website, so the dev extra brings both
        "dev": (requirements("dev_requirements") + requirements("serve_requirements")
                + requirements("docs_requirements")),
        "serve": requirements("serve_requirements"),
        "docs": requirements("docs_requirements"),
        "bench": requirements("bench_requirements"),
    },
    zip_safe=False,
)
