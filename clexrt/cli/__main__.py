"""python -m clexrt.cli: the same as the clexrt command."""
from . import main

main()
