"""`python -m covidzoo` runs the command line (and `torchrun -m covidzoo` too)."""

from covidzoo.cli import main

main()
