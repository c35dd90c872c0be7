from bus.app import main
from order_svc.service import SPEC

main(SPEC)
