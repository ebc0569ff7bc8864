"""quee-kit: a study kit for input-dependent compute reduction by early exiting and quantization (QuEE)."""
__version__ = "0.1.0"
