"""``python -m ptrain``: the command line."""

from ptrain._cli import main

main()
