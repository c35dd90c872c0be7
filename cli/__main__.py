"""`python -m cli` runs `oms`."""

from cli.app import main

main()
