"""`python -m inventory_svc`: run the inventory service until SIGTERM/SIGINT."""

from bus.app import main
from inventory_svc.service import SPEC

if __name__ == "__main__":
    main(SPEC)
