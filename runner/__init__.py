"""Sandrun: a declarative, policy-driven job runner for untrusted WebAssembly tools.

The import package is deliberately light: ``import runner`` pulls in nothing third-party,
so ``sandrun --help`` stays fast. Import :mod:`runner.api` for the library's front door.
"""

__version__ = "0.1.0"
