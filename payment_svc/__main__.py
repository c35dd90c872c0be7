"""`python -m payment_svc`: run the payment service until SIGTERM/SIGINT."""

from bus.app import main
from payment_svc.service import SPEC

if __name__ == "__main__":
    main(SPEC)
