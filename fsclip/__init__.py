"""fsclip: a toolkit for few-shot adaptation of CLIP, in the Dassl/CoOp style.

Importing this package is cheap: subpackages load on demand.
"""

__version__ = "0.1.0"
