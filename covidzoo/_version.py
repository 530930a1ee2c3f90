"""The covidzoo version: one home, read by the package face, the build and every file writer."""

__version__ = "0.1.0"
