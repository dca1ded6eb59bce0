"""ptb-harness: a competition harness for Penn Treebank language modelling."""

__version__ = "0.1.0"
