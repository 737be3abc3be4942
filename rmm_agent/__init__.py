"""The RMM endpoint agent: enrolls, reports facts, runs signed instructions, reports results.

Standard library plus ``cryptography`` only, so it can be installed on any endpoint without
pulling in the server's stack.
"""

__version__ = "0.1.0"
