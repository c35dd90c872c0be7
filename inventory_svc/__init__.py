"""The inventory service: catalog and stock, reservations per order."""
